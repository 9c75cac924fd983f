"""Micro-benchmark: drafting cost per step as the context grows (prompt lookup) and as the
datastore grows (REST). Lookup cost must stay flat in the context length.

    flock /tmp/specdec-cpu.lock python benchmarks/bench_lookup.py

Token streams are synthetic: Zipf-distributed ids over a 32k vocabulary with copied spans, so
that n-grams repeat as in real text. Each measurement appends one token (or a few, as an
accepted draft would) and times `propose` (index update + lookup + trie + scoring + selection),
median over many steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from specdec import DraftContext, SamplingParams
from specdec_plugin_retrieval.prompt_lookup import PromptLookupDrafter


def synthetic_stream(size: int, seed: int = 0, vocab: int = 32_000) -> list[int]:
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    while len(tokens) < size:
        if len(tokens) > 100 and rng.random() < 0.3:  # copy an earlier span, as answers quote prompts
            start = int(rng.integers(0, len(tokens) - 50))
            tokens.extend(tokens[start:start + int(rng.integers(5, 40))])
        else:
            tokens.extend((rng.zipf(1.3, int(rng.integers(5, 30))) % vocab).tolist())
    return tokens[:size]


def time_prompt_lookup(context_length: int, steps: int, **params) -> tuple[float, float]:
    """Median and 90th percentile microseconds of one propose after one committed token."""
    stream = synthetic_stream(context_length + steps, seed=context_length)
    drafter = PromptLookupDrafter(**params)
    sampling = SamplingParams()
    drafter.start(stream[:context_length], sampling)
    drafter.index.sync(stream[:context_length])  # the prompt is indexed once, at the first step
    times = []
    for step in range(steps):
        tokens = stream[:context_length + step + 1]
        context = DraftContext(tokens, context_length, sampling, 64, None, step)
        tic = time.perf_counter()
        drafter.propose(context)
        times.append(time.perf_counter() - tic)
    times.sort()
    return 1e6 * statistics.median(times), 1e6 * times[int(0.9 * len(times))]


def time_rest(store_tokens: int, steps: int) -> tuple[float, float]:
    from specdec_plugin_retrieval.rest import RestDrafter
    from specdec_plugin_retrieval.store import build_store

    stream = synthetic_stream(store_tokens, seed=7)
    documents = [stream[i:i + 500] for i in range(0, len(stream), 500)]
    with tempfile.TemporaryDirectory() as folder:
        store = build_store(documents, Path(folder) / "store", {"name": "synthetic", "vocab_size": 32_000,
                                                                "vocab_sha256": "-"})
        drafter = RestDrafter(store)
        sampling = SamplingParams()
        queries = synthetic_stream(steps + 64, seed=11)
        times = []
        for step in range(steps):
            tokens = queries[:64 + step]
            context = DraftContext(tokens, 64, sampling, 64, None, step)
            tic = time.perf_counter()
            drafter.propose(context)
            times.append(time.perf_counter() - tic)
    times.sort()
    return 1e6 * statistics.median(times), 1e6 * times[int(0.9 * len(times))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print("prompt_lookup: one propose after one committed token (microseconds)")
    for label, params in (("chain (defaults)", {}),
                          ("tree, 4 branches, frequent", {"max_branches": 4, "selection": "frequent"})):
        for length in (500, 5000, 20000):
            median, p90 = time_prompt_lookup(length, args.steps, **params)
            print(f"  {label:<28} context {length:>6}: median {median:7.1f}  p90 {p90:7.1f}")
    print("rest: one propose (microseconds)")
    for size in (100_000, 1_000_000):
        tic = time.perf_counter()
        median, p90 = time_rest(size, min(args.steps, 500))
        print(f"  store {size:>9} tokens: median {median:7.1f}  p90 {p90:7.1f}  "
              f"(build + run {time.perf_counter() - tic:.1f} s)")


if __name__ == "__main__":
    main()
