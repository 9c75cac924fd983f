"""A rough wall-clock check: plain decoding vs pipelines on a few questions per category.

    flock /tmp/specdec-cpu.lock python benchmarks/quick_check.py QUESTIONS.jsonl \
        --pipeline examples/prompt_lookup.yaml --pipeline examples/combined.yaml \
        --categories summarization rag translation --per-category 3 --max-new-tokens 128

QUESTIONS.jsonl: Spec-Bench style records (`category`, `turns`; the first turn is asked). Every
question runs plain decoding (`drafter: none`) and each pipeline back to back, greedy, with the
same `max_new_tokens`; the report gives per-category speedup of summed wall time, mean accepted
tokens and drafting ms per step. `--save-outputs FILE` writes the plain answers as chat records,
for `replay.py`. The official numbers come from `specdec bench` on a quiet machine; this is for
choosing defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions")
    parser.add_argument("--pipeline", "-p", action="append", required=True)
    parser.add_argument("--categories", nargs="*")
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--save-outputs")
    args = parser.parse_args(argv)

    import torch

    from specdec import GenerationStats, Pipeline, read_json_lines

    torch.set_num_threads(2)
    records = [record for _, record in read_json_lines(args.questions)]
    chosen: dict[str, list] = defaultdict(list)
    for record in records:
        category = record["category"]
        if (not args.categories or category in args.categories) and len(chosen[category]) < args.per_category:
            chosen[category].append(record)
    plain = Pipeline.from_dict({"name": "ar", "drafter": {"type": "none"}})
    others = [Pipeline.from_yaml(path, model=plain.model, tokenizer=plain.tokenizer) for path in args.pipeline]
    labels = ["ar"] + [pipeline.config.label for pipeline in others]
    totals = {label: defaultdict(GenerationStats) for label in labels}
    saved = []
    for category, questions in chosen.items():
        for record in questions:
            messages = [{"role": "user", "content": record["turns"][0]}]
            reference = plain.generate(messages, max_new_tokens=args.max_new_tokens, temperature=0.0)
            totals["ar"][category] = totals["ar"][category].merge(reference.stats)
            saved.append({"messages": messages + [{"role": "assistant", "content": reference.text}],
                          "category": category})
            for label, pipeline in zip(labels[1:], others):
                result = pipeline.generate(messages, max_new_tokens=args.max_new_tokens, temperature=0.0)
                if result.token_ids != reference.token_ids:
                    print(f"warning: {label} differs from plain decoding on question "
                          f"{record.get('question_id')}", file=sys.stderr)
                totals[label][category] = totals[label][category].merge(result.stats)
            print(f"done {category} {record.get('question_id')}", file=sys.stderr, flush=True)
    print(f"{'category':<16}" + "".join(f"{label:>28}" for label in labels[1:]))
    for category in chosen:
        base = totals["ar"][category]
        row = f"{category:<16}"
        for label in labels[1:]:
            stats = totals[label][category]
            row += (f"{base.wall_seconds / stats.wall_seconds:>9.2f}x acc {stats.mean_accepted_tokens:4.2f} "
                    f"dr {stats.draft_ms_per_step:5.2f}ms")
        print(row)
    if args.save_outputs:
        with open(args.save_outputs, "w", encoding="utf-8") as file:
            for record in saved:
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
