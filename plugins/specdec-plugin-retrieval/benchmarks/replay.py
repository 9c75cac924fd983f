"""Exact greedy acceptance and modeled speedup of pipelines, from saved greedy answers.

    python benchmarks/replay.py CORPUS.jsonl --pipeline examples/prompt_lookup.yaml [...]

CORPUS.jsonl: chat records (`messages`, the last one the assistant's answer), as written by
`specdec retrieval self-distill` or `quick_check.py --save-outputs`. See
`specdec_plugin_retrieval.replay` for what is replayed and what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from specdec_plugin_retrieval.adaptive import CostModel
from specdec_plugin_retrieval.replay import ReplayStats, load_conversations, replay


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="replay greedy outputs through drafters (no model run)")
    parser.add_argument("corpus", help="JSONL chat records whose last message is the greedy answer")
    parser.add_argument("--pipeline", "-p", action="append", required=True, help="pipeline YAML (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a drafter param in every pipeline (JSON value), e.g. --set num_tokens=8")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)

    from specdec.config import load_yaml, validate_pipeline
    from specdec.plugins import default_plugins
    from specdec.registry import BuildContext
    from specdec_plugin_retrieval.corpus import load_tokenizer

    registry = default_plugins().registry
    tokenizer = load_tokenizer(None)
    pairs = load_conversations(args.corpus, tokenizer)[: args.limit]
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    for path in args.pipeline:
        data, text = load_yaml(path)
        data["drafter"].setdefault("params", {}).update(overrides)
        validated = validate_pipeline(data, registry, path, text)

        def build(block, location):
            from specdec.config import validate_component

            component, params = validate_component("drafter", block, registry, location)
            return component.factory(context, params)

        context = BuildContext(None, tokenizer, "cpu", None, None, build)
        drafter = build(data["drafter"], "drafter")
        params = validated.drafter_params
        cost = CostModel(getattr(params, "node_cost", 0.08), getattr(params, "draft_overhead", 0.0))
        total = ReplayStats()
        for prompt, output in pairs:
            total.add(replay(drafter, prompt, output, cost))
        print(f"{path} {overrides or ''}: {total.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
