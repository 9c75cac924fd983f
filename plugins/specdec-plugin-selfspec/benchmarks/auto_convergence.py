"""How `layer_skip`'s `skip: auto` search converges on the default model.

Runs a layer-skip pipeline (default: examples/layer-skip-auto.yaml) over the first questions of
each Spec-Bench task, greedy, and prints per generation what the search scored (skipped layers,
depth-1 acceptance on its window, expected speed ratio against plain decoding) and what it chose,
then the final choice and how often each layer ended up skipped. Output equals plain decoding's
(checked against an AR pipeline on the same model).

    python plugins/specdec-plugin-selfspec/benchmarks/auto_convergence.py \
        --questions ../shared/data/spec_bench/dev.jsonl --per-task 2 --json auto.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from specdec import Pipeline, read_json_lines

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", required=True)
    parser.add_argument("--pipeline", default=str(EXAMPLES / "layer-skip-auto.yaml"))
    parser.add_argument("--per-task", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--json", help="also write the trajectory here")
    args = parser.parse_args()

    pipeline = Pipeline.from_yaml(args.pipeline)
    plain = Pipeline.from_dict({"drafter": {"type": "none"}}, model=pipeline.model, tokenizer=pipeline.tokenizer)
    search = pipeline.drafter.search
    if search is None:
        raise SystemExit(f"{args.pipeline} does not use skip: auto")
    seen: Counter = Counter()
    questions = []
    for _, record in read_json_lines(args.questions):
        task = record["category"]
        if seen[task] < args.per_task:
            seen[task] += 1
            questions.append(record)
    trajectory = []
    for question in questions:
        messages = [{"role": "user", "content": question["turns"][0]}]
        before = len(search.log.scored)
        tic = time.perf_counter()
        result = pipeline.generate(messages, temperature=0, max_new_tokens=args.max_new_tokens)
        seconds = time.perf_counter() - tic
        reference = plain.generate(messages, temperature=0, max_new_tokens=args.max_new_tokens)
        best = search.best
        entry = {
            "question_id": question["question_id"], "category": question["category"],
            "scored": [{"step": step, "skipped": list(skipped), "acceptance": acceptance, "value": value}
                       for step, skipped, acceptance, value in search.log.scored[before:]],
            "chosen_skipped": None if best is None else sorted(set(range(search.num_layers)) - set(best.run)),
            "chosen_acceptance": None if best is None else best.acceptance,
            "chosen_value": None if best is None else best.value,
            "mean_accepted_tokens": result.stats.mean_accepted_tokens,
            "acceptance_by_position": result.stats.acceptance_by_position,
            "draft_ms_per_step": result.stats.draft_ms_per_step,
            "seconds": seconds, "same_as_plain": result.token_ids == reference.token_ids,
        }
        trajectory.append(entry)
        print(f"{question['category']:>15} q{question['question_id']}: scored {len(entry['scored'])} sets; "
              f"best skip {entry['chosen_skipped']} acceptance {entry['chosen_acceptance']} "
              f"value {entry['chosen_value'] and round(entry['chosen_value'], 3)}; "
              f"mean accepted {entry['mean_accepted_tokens']:.2f}; same as plain: {entry['same_as_plain']}")
        for row in entry["scored"]:
            print(f"{'':>17}step {row['step']:>3}: skip {row['skipped']} -> acceptance {row['acceptance']:.3f}, "
                  f"value {row['value']:.3f}")
    skipped = Counter(layer for entry in trajectory for layer in entry["chosen_skipped"] or [])
    print("influence (1 - cos) per layer:", [round(value, 3) for value in search.influence or []])
    print("layers in the chosen set after each generation (count):", dict(sorted(skipped.items())))
    if args.json:
        Path(args.json).write_text(json.dumps({"pipeline": args.pipeline, "influence": search.influence,
                                               "trajectory": trajectory}, indent=1))


if __name__ == "__main__":
    main()
