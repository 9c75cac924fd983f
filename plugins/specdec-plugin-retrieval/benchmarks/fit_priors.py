"""Measure the acceptance model's cells on greedy generations: where the priors come from.

    python benchmarks/fit_priors.py CORPUS.jsonl [--store STORE | --folds K]

Replays the chats of CORPUS.jsonl (see `replay.py`) through each drafter with a model that never
forgets (decay 1) and no prior weight, then prints every cell's empirical conditional acceptance
and its number of trials, by depth (first vs deeper) and share bucket, pooled over match lengths
and per match bucket. The defaults in `prompt_lookup.py` and `rest.py` are rounded from such
a table measured on the self-distilled answers of the shipped prompt set; for REST with
`--folds 5`: each fifth of the chats is replayed against a store built from the other four
fifths, so that no answer is drafted from its own copy.
"""

from __future__ import annotations

import argparse
import sys

from specdec_plugin_retrieval.adaptive import SHARE_EDGES, AcceptanceModel, CostModel
from specdec.testing import replay_greedy
from specdec_plugin_retrieval.replay import load_conversations


def fit(drafter, pairs, edges, model: AcceptanceModel | None = None) -> AcceptanceModel:
    model = model or AcceptanceModel(edges, [0.5] * (len(edges) * 2 * (len(SHARE_EDGES) + 1)),
                                     prior_weight=1e-9, decay=1.0)
    drafter.drafting.model = drafter.drafting.tracker.model = model
    for prompt, output in pairs:
        replay_greedy(drafter, prompt, output, CostModel())
    return model


def fit_rest_folds(corpus: str, pairs, tokenizer, folds: int) -> AcceptanceModel:
    """REST cells, each chat replayed against a store built without its fold."""
    import tempfile
    from pathlib import Path

    from specdec_plugin_retrieval import rest
    from specdec_plugin_retrieval.corpus import build_from_corpus

    lines = [line for line in open(corpus, encoding="utf-8") if line.strip()][: len(pairs)]
    model = None
    with tempfile.TemporaryDirectory() as folder:
        for fold in range(folds):
            train = Path(folder) / f"train{fold}.jsonl"
            train.write_text("".join(line for index, line in enumerate(lines) if index % folds != fold))
            store = build_from_corpus([train], tokenizer, Path(folder) / f"store{fold}")
            held_out = [pair for index, pair in enumerate(pairs) if index % folds == fold]
            model = fit(rest.RestDrafter(store, adaptive=False), held_out, rest.MATCH_EDGES, model)
    return model


def report(name: str, model: AcceptanceModel) -> None:
    shares = len(SHARE_EDGES) + 1
    print(f"{name}: P(accept | parent accepted) by share bucket {SHARE_EDGES} (trials)")
    for deeper, label in ((0, "first"), (1, "deeper")):
        pooled = []
        for bucket in range(shares):
            cells = [(match * 2 + deeper) * shares + bucket for match in range(len(model.match_edges))]
            hits = sum(model.successes[cell] for cell in cells)
            trials = sum(model.trials[cell] for cell in cells)
            pooled.append(f"{hits / trials:.2f} ({int(trials)})" if trials else "  -  ")
        print(f"  {label:<7} all matches: " + "  ".join(pooled))
        for match, edge in enumerate(model.match_edges):
            row = []
            for bucket in range(shares):
                cell = (match * 2 + deeper) * shares + bucket
                trials = model.trials[cell]
                row.append(f"{model.successes[cell] / trials:.2f} ({int(trials)})" if trials else "  -  ")
            print(f"  {label:<7} match >= {edge:<3}: " + "  ".join(row))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--store", help="also fit REST on this store")
    parser.add_argument("--folds", type=int, help="also fit REST, on stores built from the corpus minus each fold")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)

    from specdec_plugin_retrieval import prompt_lookup, rest
    from specdec_plugin_retrieval.corpus import load_tokenizer

    tokenizer = load_tokenizer(None)
    pairs = load_conversations(args.corpus, tokenizer)[: args.limit]
    report("prompt_lookup", fit(prompt_lookup.PromptLookupDrafter(adaptive=False), pairs, prompt_lookup.MATCH_EDGES))
    if args.store:
        from specdec_plugin_retrieval.store import open_store

        drafter = rest.RestDrafter(open_store(args.store), adaptive=False)
        report("rest", fit(drafter, pairs, rest.MATCH_EDGES))
    elif args.folds:
        report(f"rest ({args.folds} folds)", fit_rest_folds(args.corpus, pairs, tokenizer, args.folds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
