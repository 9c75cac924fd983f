"""What torch's CPU kernels charge for the matrix products of a decoding step, by rows.

    python docs/benchmarks/cpu_kernels.py [--rows 1,2,3,4,8,16] [--repeats 9]

The projections of the default model (SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 3 key/value
heads of 64; query/key/value and gate/up fused as the self-speculation copies fuse them) with
random weights, one pass over all 30 layers per timing, so that, as in a real step, the weights
come from memory rather than cache. Rows are the tokens of one forward: 1 for a plain step,
1 + k to verify k draft tokens. Prints milliseconds per pass (median) for each kernel:

- `float32` (MKL, what the target runs with `target.linear_kernel: torch`), with the weight
  stored transposed (`x @ W^T` contiguous: another MKL path), and oneDNN's on the weight as it is
  and reordered into its blocked layout (`onednn`, `onednn_packed`);
- fbgemm's dynamic int8 product (`low_precision`'s int8 copy, from specdec-plugin-selfspec), activations
  in 8 and in 7 bits;
- fbgemm's float16-weight product with float32 activations;
- aten's weight-only int8 and int4 (groups of 32) products with float32 activations;

then the vocabulary projection (49152 x 576) in float32, both layouts. Made to name what bounds
speculation on a 2-core CPU (docs/benchmarks.md, "What the CPU's kernels allow").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from specdec.linear_kernels import onednn_linear  # the target's oneDNN products
from specdec_plugin_selfspec.formats import dynamic_int8  # the int8 copy's own product

HIDDEN, MLP, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152
SHAPES = ((HIDDEN + 2 * KV, HIDDEN), (HIDDEN, HIDDEN), (2 * MLP, HIDDEN), (HIDDEN, MLP))  # [out, in]


def float16_weights(weight: torch.Tensor):
    packed = torch.ops.quantized.linear_prepack_fp16(weight, None)
    return lambda x: torch.ops.quantized.linear_dynamic_fp16(x, packed)


def int8_weight_only(weight: torch.Tensor):
    scales = weight.abs().amax(1) / 127
    quantized = torch.round(weight / scales[:, None]).to(torch.int8)
    return lambda x: torch._weight_int8pack_mm(x, quantized, scales)


def int4_weight_only(weight: torch.Tensor, group: int = 32):
    groups = weight.unflatten(1, (-1, group))
    low, high = groups.amin(-1), groups.amax(-1)
    scales = ((high - low) / 15).clamp(min=1e-8)
    codes = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).flatten(1).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_and_zeros = torch.stack([scales, low + 8 * scales], -1).transpose(0, 1).contiguous()
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros)


def transposed(weight: torch.Tensor):
    stored = weight.t().contiguous()
    return lambda x: x @ stored


KERNELS = {
    "float32 (MKL)": lambda weight: (lambda x: F.linear(x, weight)),
    "float32, weight stored transposed": transposed,
    "float32, oneDNN": onednn_linear,
    "float32, oneDNN reordered": lambda weight: onednn_linear(weight, reorder=True),
    "int8 dynamic, 8-bit activations": lambda weight: dynamic_int8(weight, None, reduce_range=False),
    "int8 dynamic, 7-bit activations": lambda weight: dynamic_int8(weight, None, reduce_range=True),
    "float16 weights (fbgemm)": float16_weights,
    "int8 weight-only (aten)": int8_weight_only,
    "int4 weight-only, groups of 32 (aten)": int4_weight_only,
}
#: kernels too slow to time at many rows (seconds per pass)
FEW_ROWS = {"int8 weight-only (aten)": 4, "int4 weight-only, groups of 32 (aten)": 2}


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        function()
        times.append(time.perf_counter() - tic)
    return 1e3 * statistics.median(times)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,2,3,4,8,16")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rows = [int(value) for value in args.rows.split(",")]
    generator = torch.Generator().manual_seed(0)
    weights = [[torch.randn(*shape, generator=generator) * 0.02 for shape in SHAPES] for _ in range(LAYERS)]
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, quantized engine "
          f"{torch.backends.quantized.engine}; ms per pass over {LAYERS} layers (median of {args.repeats})\n")
    print("| kernel | " + " | ".join(f"{count} rows" for count in rows) + " |")
    print("| --- |" + " ---: |" * len(rows))
    for name, make in KERNELS.items():
        products = [[make(weight) for weight in layer] for layer in weights]
        cells = []
        for count in rows:
            if count > FEW_ROWS.get(name, count):
                cells.append("-")
                continue
            inputs = {size: torch.randn(count, size, generator=generator) for size in (HIDDEN, MLP)}

            def one_pass():
                for layer in products:
                    for product, (_, size) in zip(layer, SHAPES):
                        product(inputs[size])

            cells.append(f"{median_ms(one_pass, args.repeats):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    head = torch.randn(VOCAB, HIDDEN, generator=generator) * 0.02
    for name, make in (("vocabulary projection, float32", KERNELS["float32 (MKL)"]),
                       ("vocabulary projection, stored transposed", transposed),
                       ("vocabulary projection, oneDNN reordered", KERNELS["float32, oneDNN reordered"])):
        product = make(head)
        cells = [f"{median_ms(lambda: product(torch.randn(count, HIDDEN)), args.repeats):.1f}" for count in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
