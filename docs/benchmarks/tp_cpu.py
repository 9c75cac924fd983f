"""Tensor parallelism on a CPU: what a step's collectives cost, and 1 rank against N.

    torchrun --standalone --nproc-per-node N docs/benchmarks/tp_cpu.py [MODEL] [--tokens 64]

Run with N = 1 (no process group) and N = tp_size; rank 0 prints one JSON line: the tokens/s of
greedy prompt-lookup decoding of a few prompts (and their tokens, to compare across N), and,
with N > 1, the median latency of the collectives a step runs (an all-reduce of one layer's
hidden states per row-parallel projection, the logits' all-gather) and of broadcasting a draft
from rank 0 (what "draft on rank 0, broadcast" would add to every step).
"""

import argparse
import json
import os
import statistics
import time

import torch

from specdec import Pipeline

PROMPTS = ["Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
           "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n"]


def median_seconds(call, repeats: int = 200) -> float:
    for _ in range(10):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    pipeline = Pipeline.from_dict({"target": {"model": args.model, "tp_size": world},
                                   "drafter": {"type": "prompt_lookup"},
                                   "sampling": {"temperature": 0.0, "max_new_tokens": args.tokens}})
    pipeline.generate(PROMPTS[0], max_new_tokens=8)  # warm-up
    started = time.perf_counter()
    results = [pipeline.generate(prompt) for prompt in PROMPTS]
    elapsed = time.perf_counter() - started
    tokens = sum(len(result.token_ids) for result in results)
    steps = sum(result.stats.steps for result in results)
    report = {"ranks": world, "tokens_per_s": round(tokens / elapsed, 1), "ms_per_step": round(1e3 * elapsed / steps, 2),
              "token_ids": [result.token_ids for result in results]}
    if world > 1:
        config = pipeline.model.config
        hidden = torch.zeros(1, 8, config.hidden_size)
        logits = torch.zeros(1, 8, config.vocab_size // world)
        gathered = [torch.zeros_like(logits) for _ in range(world)]
        report["allreduce_hidden_8_rows_us"] = round(1e6 * median_seconds(lambda: torch.distributed.all_reduce(hidden)), 1)
        report["allgather_logits_8_rows_us"] = round(
            1e6 * median_seconds(lambda: torch.distributed.all_gather(gathered, logits)), 1)
        draft = list(range(8))
        report["broadcast_draft_us"] = round(1e6 * median_seconds(lambda: pipeline.tp.broadcast(draft)), 1)
        report["collectives_per_step"] = 2 * config.num_hidden_layers + 1
    if pipeline.tp is None or pipeline.tp.is_main:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
