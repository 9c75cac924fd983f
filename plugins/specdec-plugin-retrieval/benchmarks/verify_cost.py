"""Measure what one verification costs as the draft grows: the input of the cost model.

    flock /tmp/specdec-cpu.lock python benchmarks/verify_cost.py [--model NAME] [--dtype float32] [--context 300]
    python benchmarks/verify_cost.py --device cuda --dtype bfloat16

Prints, for draft sizes k, the mean time of one target forward over the pending token plus k
draft nodes (a chain; a tree of the same size costs the same: only the mask differs), and the
ratio to a plain one-token step. The `node_cost` parameter of the drafters is the slope of that
ratio: (cost(k) / cost(0) - 1) / k.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specdec.draft import Draft
from specdec.models import load_model
from specdec.verifiers.hf import HFVerifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model (default: the embedded default model)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--context", type=int, default=300, help="committed tokens in the cache")
    parser.add_argument("--sizes", default="0,1,2,4,8,12,16,24,32,64")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_model(args.model, device=args.device, dtype=args.dtype)
    device = model.device
    verifier = HFVerifier(model)
    generator = torch.Generator().manual_seed(0)
    vocab = verifier.vocab_size
    prompt = torch.randint(0, vocab, (args.context,), generator=generator).tolist()
    verifier.start(len(prompt), 128)
    verifier.verify(prompt, Draft.empty())
    verifier.commit(len(prompt), ())
    sizes = [int(size) for size in args.sizes.split(",")]
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for repeat in range(args.repeats + 2):
        for size in sizes:  # interleaved, so that load changes hit every size alike
            draft = Draft.chain(torch.randint(0, vocab, (size,), generator=generator).tolist()) \
                if size else Draft.empty()
            _sync(device)
            tic = time.perf_counter()
            verifier.verify([int(prompt[-1])], draft)
            _sync(device)
            elapsed = time.perf_counter() - tic
            verifier.runner.rollback(len(prompt))  # forget the forward: the cache stays at `context`
            if repeat >= 2:  # warm-up
                times[size].append(elapsed)
    base = statistics.median(times[sizes[0]])
    print(f"{device}, {args.dtype}, context {args.context} tokens, {torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'draft nodes':>12} {'ms':>8} {'x plain':>8} {'slope':>7}")
    for size in sizes:
        median = statistics.median(times[size])
        slope = (median / base - 1) / size if size else 0.0
        print(f"{size:>12} {1000 * median:>8.1f} {median / base:>8.2f} {slope:>7.3f}")


if __name__ == "__main__":
    main()
