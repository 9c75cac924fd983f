"""Exact greedy acceptance and modeled speedup of pipelines, from saved greedy answers.

    python benchmarks/replay.py CORPUS.jsonl --pipeline examples/prompt_lookup.yaml [...]

CORPUS.jsonl: chat records (`messages`, the last one the assistant's answer), as written by
`specdec retrieval self-distill` or `quick_check.py --save-outputs`. See
`specdec.testing.replay_greedy` for what is replayed and what the numbers mean.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from specdec_plugin_retrieval.adaptive import CostModel
from specdec.testing import GreedyReplay, replay_greedy
from specdec_plugin_retrieval.replay import load_conversations


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="replay greedy outputs through drafters (no model run)")
    parser.add_argument("corpus", help="JSONL chat records whose last message is the greedy answer")
    parser.add_argument("--pipeline", "-p", action="append", required=True, help="pipeline YAML (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a drafter param in every pipeline (JSON value), e.g. --set num_tokens=8")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--curve", help="verification cost curve as SIZE:COST,... (e.g. 1:1.03,4:1.39,8:1.71,"
                                        "16:2.0,32:2.44,64:3.4 from verify_cost.py); default: the pipeline's "
                                        "node_cost, 0.08 per node where it is 'auto'")
    args = parser.parse_args(argv)

    from specdec import BuildContext, default_plugins, load_yaml, validate_component, validate_pipeline
    from specdec_plugin_retrieval.corpus import load_tokenizer

    registry = default_plugins().registry
    tokenizer = load_tokenizer(None)
    pairs = load_conversations(args.corpus, tokenizer)[: args.limit]
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    for path in args.pipeline:
        data, text = load_yaml(path)
        data["drafter"].setdefault("params", {}).update(overrides)
        validated = validate_pipeline(data, registry, path, text)

        if args.curve:
            cost = CostModel(curve=tuple((int(size), float(value)) for size, value in
                                         (item.split(":") for item in args.curve.split(","))))
        else:
            node_cost = getattr(validated.drafter_params, "node_cost", 0.08)
            cost = CostModel(0.08 if node_cost == "auto" else node_cost,
                             getattr(validated.drafter_params, "draft_overhead", 0.0))

        def build(block, location):
            if block.get("params", {}).get("node_cost") == "auto":  # no model here to time
                block = {**block, "params": {**block["params"], "node_cost": 0.08}}
            component, params = validate_component("drafter", block, registry, location)
            built = component.factory(context, params)
            if hasattr(built, "drafting"):  # the retrieval drafters: decide with the replay's cost model
                built.drafting.cost = cost
            return built

        context = BuildContext(None, tokenizer, "cpu", None, None, build)
        drafter = build(data["drafter"], "drafter")
        total = GreedyReplay()
        for prompt, output in pairs:
            total.add(replay_greedy(drafter, prompt, output, cost))
        print(f"{path} {overrides or ''}: {total.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
