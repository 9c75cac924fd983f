"""What tensor parallelism costs a target on one device (tp_size 1, the default).

    python docs/benchmarks/tp_one_rank.py --questions FILE [--device cuda] [--dtype bfloat16]
        [--prompts 12] [--tokens 128] [--rounds 3]

With tp_size 1 no process group starts and nothing is sharded; the only code a step runs that
it did not run before tensor parallelism landed (commit 619042f) is a `try` around the model
call in `CausalLMRunner._run`, which re-raises a failed collective with a clear message. This
script times greedy prompt-lookup decoding of the same prompts with that forward as shipped and
with the forward as it was before (the same call without the `try`), alternating the two in
every round of one process (first one, then the other, the order reversed every round, after
one untimed round of every variant: a GPU's first forwards of a shape are slower), eagerly (the
`try` runs on every forward) and, on CUDA, with CUDA graphs (the forward is captured once and
replayed: no Python runs per step, so both variants replay the same graph). It prints one JSON
line: tokens/s per variant (median over rounds) and, per mode, whether both variants produced
the same tokens (eager and graph-replayed forwards may round differently in 16 bits).
"""

import argparse
import json
import statistics
import time
import types

from specdec import Pipeline, read_json_lines


def forward_before_tensor_parallelism(self, input_ids, positions, mask, logits_rows, hidden_state_layers):
    """`CausalLMRunner._run` as it was at 619042f^1: the model call without the `try`."""
    writes = self.cache.writes
    output = self.model(
        input_ids=input_ids,
        position_ids=positions,
        attention_mask=mask,
        use_cache=True,
        logits_to_keep=logits_rows,
        output_hidden_states=list(hidden_state_layers) if hidden_state_layers else False,
        **{self._cache_argument: self.cache},
    )
    if self.cache.writes == writes:
        raise RuntimeError("the model ignored specdec's cache")
    logits = output.logits.float()
    if logits.shape[1] != logits_rows:
        raise RuntimeError("the model did not honour logits_to_keep")
    return logits, {layer: output.hidden_states[layer] for layer in hidden_state_layers}


def first_turns(path: str, count: int) -> list[str]:
    """The first turn of `count` questions, taken round-robin over the file's tasks."""
    by_task: dict[str, list[str]] = {}
    for _, record in read_json_lines(path):
        by_task.setdefault(record["category"], []).append(record["turns"][0])
    prompts = []
    while len(prompts) < count and any(by_task.values()):
        for questions in by_task.values():
            if questions and len(prompts) < count:
                prompts.append(questions.pop(0))
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", required=True)
    parser.add_argument("--model")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pipeline = Pipeline.from_dict({
        "target": {"model": args.model, "device": args.device, "dtype": args.dtype, "tp_size": 1},
        "drafter": {"type": "prompt_lookup"},
        "sampling": {"temperature": 0.0, "max_new_tokens": args.tokens}})
    assert pipeline.tp is None and not hasattr(pipeline.model, "specdec_tp")
    runner = pipeline.verifier.runner
    graphs = runner.graphs
    prompts = [[{"role": "user", "content": text}] for text in first_turns(args.questions, args.prompts)]
    modes = ["eager"] + (["cuda graphs"] if graphs is not None else [])
    variants = [(mode, forward) for mode in modes for forward in ("as shipped", "before tensor parallelism")]
    seconds = {variant: [] for variant in variants}
    tokens: dict[tuple[str, str], list[list[int]]] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up every variant and is not counted
        for mode, forward in variants if round_ % 2 else variants[::-1]:
            runner.graphs = graphs if mode == "cuda graphs" else None
            if forward == "as shipped":
                runner.__dict__.pop("_run", None)
            else:
                runner._run = types.MethodType(forward_before_tensor_parallelism, runner)
            started = time.perf_counter()
            results = [pipeline.generate(prompt) for prompt in prompts]
            if round_:
                seconds[mode, forward].append(time.perf_counter() - started)
            tokens[mode, forward] = [result.token_ids for result in results]
    runner.__dict__.pop("_run", None)
    runner.graphs = graphs
    report = {"device": str(pipeline.device), "dtype": str(pipeline.dtype).removeprefix("torch."),
              "prompts": len(prompts), "rounds": args.rounds}
    for mode in modes:
        same = tokens[mode, "as shipped"] == tokens[mode, "before tensor parallelism"]
        shipped, before = (sum(len(ids) for ids in tokens[mode, forward]) / statistics.median(seconds[mode, forward])
                           for forward in ("as shipped", "before tensor parallelism"))
        report[mode] = {"tokens_per_s_as_shipped": round(shipped, 1),
                        "tokens_per_s_before_tensor_parallelism": round(before, 1),
                        "as_shipped_over_before": round(shipped / before, 4), "same_tokens": same,
                        "round_seconds": {forward: [round(value, 3) for value in seconds[mode, forward]]
                                          for forward in ("as shipped", "before tensor parallelism")}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
