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

import torch

from specdec import load_model, time_verification


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
    sizes = [int(size) for size in args.sizes.split(",")]
    times = time_verification(model, sizes, context=args.context, repeats=args.repeats, warmup=2)
    base = statistics.median(times[sizes[0]])
    print(f"{model.device}, {args.dtype}, context {args.context} tokens, {torch.get_num_threads()} threads; "
          f"median of {args.repeats}")
    print(f"{'draft nodes':>12} {'ms':>8} {'x plain':>8} {'slope':>7}")
    for size in sizes:
        median = statistics.median(times[size])
        slope = (median / base - 1) / size if size else 0.0
        print(f"{size:>12} {1000 * median:>8.1f} {median / base:>8.2f} {slope:>7.3f}")


if __name__ == "__main__":
    main()
