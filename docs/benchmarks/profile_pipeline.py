"""Where a pipeline's decoding time goes: the Python functions and the torch operators.

    python docs/benchmarks/profile_pipeline.py PIPELINE.yaml --questions FILE [--device cuda]
        [--dtype bfloat16] [--prompts 3] [--tokens 64] [--rows 25]

Generates the first turn of `--prompts` questions (round-robin over the tasks) four times:
untimed (warm-up), timed (the decoding speed it prints), under cProfile (the Python functions by
their own time: which part of a drafter or of the engine a step waits on) and under
torch.profiler (the operators by their own host time and, on CUDA, by their device time too).
Made for what a benchmark cannot say, e.g. why a drafter's `draft ms/step` on a GPU is far above
its arithmetic (docs/benchmarks.md, "GPU: NVIDIA H200").
"""

import argparse
import cProfile
import io
import pstats
import time

import torch

from specdec import Pipeline, default_plugins, load_yaml, validate_pipeline
from tp_one_rank import first_turns  # the script beside this one: the same prompts


def build(path: str, device: str | None, dtype: str | None) -> Pipeline:
    """The pipeline of `path`, its target moved to `device` / `dtype` where given (as `specdec bench` does)."""
    plugins = default_plugins()
    data, text = load_yaml(path)
    overrides = {key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None}
    if overrides:
        data = {**data, "target": {**(data.get("target") or {}), **overrides}}
    return Pipeline(validate_pipeline(data, plugins.registry, path, text), plugins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--questions", required=True)
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    pipeline = build(args.pipeline, args.device, args.dtype)
    prompts = [[{"role": "user", "content": text}] for text in first_turns(args.questions, args.prompts)]

    def decode():
        return [pipeline.generate(prompt, max_new_tokens=args.tokens) for prompt in prompts]

    decode()  # untimed: first forwards, graph captures, measured cost curves
    started = time.perf_counter()
    results = decode()
    elapsed = time.perf_counter() - started
    tokens = sum(len(result.token_ids) for result in results)
    steps = sum(result.stats.steps for result in results)
    drafting = sum(result.stats.draft_seconds for result in results)
    print(f"{pipeline.device} {str(pipeline.dtype).removeprefix('torch.')}: {tokens} tokens in {elapsed:.2f} s "
          f"({tokens / elapsed:.1f} tok/s), {steps} steps ({1e3 * elapsed / steps:.2f} ms per step, "
          f"{1e3 * drafting / steps:.2f} ms drafting)")

    profiler = cProfile.Profile()
    profiler.enable()
    decode()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.rows)
    print("\n== Python functions by own time (cProfile)\n" + out.getvalue())

    activities = [torch.profiler.ProfilerActivity.CPU]
    if pipeline.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as traced:
        decode()
    averages = traced.key_averages()
    print("== torch operators by own host time\n" + averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if pipeline.device.type == "cuda":
        print("== torch operators by own device time\n"
              + averages.table(sort_by="self_device_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
