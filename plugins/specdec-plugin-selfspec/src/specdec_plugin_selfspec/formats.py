"""Cheaper copies of the target's weights, and which one this machine runs fastest.

A batch-of-one decoding step on a CPU reads every weight once: its time is mostly memory
traffic, so a copy that reads fewer bytes drafts faster. Two formats:

- `int8`: each projection becomes a dynamic int8 product from torch's quantized kernels
  (fbgemm on x86, qnnpack on ARM): weights quantized once per output channel, activations per
  call (per tensor, so a one-token call is per token; 8 bits where `int8_full_range`, else 7),
  int32 accumulation. A quarter of the bytes.
- `bfloat16`: weights cast to bfloat16. Half the bytes, but only fast where the CPU has native
  bf16 matrix instructions (AMX or AVX512-BF16; `native_bfloat16()` detects them); elsewhere
  each product is emulated and is no faster than float32. Where it is native, int8 still reads
  half as many bytes, so on such a CPU `auto` times one layer's products in both formats and
  picks the faster (`measure_formats`) instead of assuming.

`float32` keeps the target's own weights (nothing copied): the same model drafting over its
own cache, which tests use as the exact reference (every greedy draft accepted).
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
import weakref
from functools import lru_cache
from pathlib import Path

import torch

from specdec_plugin_selfspec.stack import LayerWeights, Projection, linear, target_layers

FORMATS = ("int8", "bfloat16", "float32")

_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux); empty where there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively: CUDA devices of compute capability 8+, CPUs
    with AMX-BF16 or AVX512-BF16 (x86 Linux), Apple silicon with FEAT_BF16 is not detected and
    counts as no."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return any(flag in cpu_flags() for flag in _BF16_FLAGS)


def int8_available() -> bool:
    """Whether this torch build has a quantized engine to run int8 copies with."""
    return torch.backends.quantized.engine not in (None, "none")


def auto_candidates(device: torch.device, target_dtype: torch.dtype) -> tuple[str, ...]:
    """The formats `auto` chooses among on `device` for a `target_dtype` target: on CUDA bfloat16
    (torch's int8 kernels are CPU-only); on a CPU int8 where torch has a quantized engine, and
    bfloat16 where it is native and the target is float32 (else it reads as many bytes)."""
    if device.type == "cuda":
        return ("bfloat16",)
    candidates = ("int8",) if int8_available() else ()
    if target_dtype == torch.float32 and native_bfloat16(device):
        candidates += ("bfloat16",)
    return candidates or ("int8",)  # none runs here: check_format says what is missing


#: `auto`'s measured choice per target, so that every drafter built on one target drafts in one format
_auto_choice: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def choose_format(requested: str, model, seconds: dict[str, float] | None = None) -> str:
    """The format `requested` means for `model`: itself, or for `auto` the one candidate
    (`auto_candidates`), or where there are two (a CPU with native bf16 and int8 kernels) the one
    whose one-token products measure faster (`measure_formats`, once per model; `seconds`: times
    already measured, e.g. by `specdec selfspec formats`)."""
    if requested != "auto":
        return requested
    candidates = auto_candidates(model.device, model.dtype)
    if len(candidates) == 1:
        return candidates[0]
    if seconds is not None:
        return min(candidates, key=seconds.__getitem__)
    if model not in _auto_choice:
        measured = measure_formats(model, candidates)
        _auto_choice[model] = min(candidates, key=measured.__getitem__)
    return _auto_choice[model]


#: untimed rounds before `measure_formats` times (first calls allocate and pack)
WARMUP_ROUNDS = 5


def measure_formats(model, formats=("int8", "bfloat16"), repeats: int = 50, seed: int = 0) -> dict[str, float]:
    """Median seconds of one token through the first decoder layer's projections (query/key/value,
    output, gate/up, down, fused as the copy fuses them), converted to each format.

    One layer stands for all (they have the same shapes). Its weights stay in cache across
    repeats, so this ranks kernels rather than memory traffic; on a Xeon without native bf16 the
    ranking was the whole copy's (int8 0.6x the float32 forward, bfloat16 1.0x). Formats are
    interleaved within each round, so that load changes hit every format alike."""
    groups = fused_groups(model.model.layers[0])
    generator = torch.Generator().manual_seed(seed)
    products = {}
    for fmt in formats:
        dtype = compute_dtype(fmt, model.dtype)
        products[fmt] = [(fused_projection(fmt, group),
                          torch.randn(1, 1, group[0].in_features, generator=generator).to(model.device, dtype))
                         for group in groups]
    times: dict[str, list[float]] = {fmt: [] for fmt in formats}
    with torch.inference_mode():
        for repeat in range(WARMUP_ROUNDS + repeats):
            for fmt in formats:
                tic = time.perf_counter()
                for product, x in products[fmt]:
                    product(x)
                if repeat >= WARMUP_ROUNDS:
                    times[fmt].append(time.perf_counter() - tic)
    return {fmt: statistics.median(values) for fmt, values in times.items()}


def check_format(fmt: str, device: torch.device, target_dtype: torch.dtype) -> None:
    """Refuse a format that cannot run here, saying which one can."""
    if fmt == "int8":
        if device.type != "cpu":
            raise ValueError(f"format int8 uses torch's CPU quantized kernels; the target is on {device}: "
                             f"use format bfloat16 (or auto)")
        if not int8_available():
            raise ValueError("format int8 needs a torch build with a quantized engine (fbgemm/x86 or qnnpack), "
                             f"and this one has none ({torch.backends.quantized.supported_engines}); use format "
                             "bfloat16 or float32")
    elif fmt == "bfloat16" and target_dtype != torch.float32 and target_dtype != torch.bfloat16:
        raise ValueError(f"format bfloat16 with a {target_dtype} target reads as many bytes as the target; "
                         f"use int8 on a CPU")


def compute_dtype(fmt: str, target_dtype: torch.dtype) -> torch.dtype:
    """The dtype activations (and the copy's own KV cache) use: int8 layers take and return
    float32; float32 is the target's own dtype."""
    return {"bfloat16": torch.bfloat16, "int8": torch.float32}.get(fmt, target_dtype)


@lru_cache(maxsize=None)
def int8_full_range() -> bool:
    """Whether int8 copies may quantize activations to all 8 bits on this machine.

    torch's dynamic int8 linear layer keeps activations to 7 bits (`reduce_range=True`) because
    fbgemm's AVX2 and plain AVX-512 kernels add pairs of u8 x s8 products in int16, which 8-bit
    activations can overflow. With AVX512-VNNI fbgemm accumulates in int32 (`vpdpbusd`), nothing
    saturates, and the eighth bit is free precision: on the default model it raised the copy's
    agreement with the target's next token from 0.90 to 0.95 (docs/benchmarks.md). Which kernel
    runs is fbgemm's choice (the CPU, `FBGEMM_ENABLE_INSTRUCTIONS`), so this asks the kernel
    itself, once: the product the int16 sums overflow first (all activations and weights at the
    top of their range) must come out right.
    """
    if not int8_available():
        return False
    width = 512  # pairs of 255 * 127 sum to 64,770 > 32,767: a saturating kernel returns about half
    product = dynamic_int8(torch.ones(8, width), None, reduce_range=False)
    return bool(torch.allclose(product(torch.ones(1, width)), torch.full((1, 8), float(width)), rtol=0.02))


def _int8(weight: torch.Tensor, bias: torch.Tensor | None) -> Projection:
    """A dynamic int8 product with 8-bit activations where `int8_full_range` allows them."""
    return dynamic_int8(weight, bias, reduce_range=not int8_full_range())


def dynamic_int8(weight: torch.Tensor, bias: torch.Tensor | None, reduce_range: bool) -> Projection:
    """Weights quantized per output channel by torch's observer; called through the quantized op
    itself (the module around it costs a Python call per projection, about 1 ms of an int8
    copy's 14 ms forward on the default model)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        module.weight.copy_(weight.float())
        if bias is not None:
            module.bias.copy_(bias.float())
    module.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still here
        warnings.simplefilter("ignore")
        packed = DynamicLinear.from_float(module)._packed_params._packed_params
    linear_dynamic = torch.ops.quantized.linear_dynamic
    return lambda x: linear_dynamic(x, packed, reduce_range)


def _dense(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> Projection:
    weight = weight.detach().to(dtype).contiguous()
    bias = None if bias is None else bias.detach().to(dtype)
    return lambda x: torch.nn.functional.linear(x, weight, bias)


def projection(fmt: str, weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> Projection:
    """One projection of the copy: the given weight matrices fused into one (their outputs
    concatenated), converted to `fmt` (`float32`: in the target's dtype, for measuring)."""
    weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b.detach() if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
    if fmt == "int8":
        return _int8(weight, bias)
    return _dense(weight, bias, compute_dtype(fmt, weight.dtype))


def fused_groups(layer) -> tuple[list[torch.nn.Linear], ...]:
    """A decoder layer's projections as the copy fuses them: query/key/value, output, gate/up, down."""
    attention, mlp = layer.self_attn, layer.mlp
    return ([attention.q_proj, attention.k_proj, attention.v_proj], [attention.o_proj],
            [mlp.gate_proj, mlp.up_proj], [mlp.down_proj])


def fused_projection(fmt: str, modules: list[torch.nn.Linear]) -> Projection:
    """`modules` (one of `fused_groups`) as one projection in `fmt`."""
    return projection(fmt, [module.weight for module in modules], [module.bias for module in modules])


def copy_layers(model, fmt: str, keep: set[int] | None = None) -> list[LayerWeights]:
    """The model's decoder layers in `fmt` (`float32`: the model's own weights, uncopied).
    Layers outside `keep` (when given) are not converted: the copy never runs them."""
    own = target_layers(model)
    if fmt == "float32":
        return own
    copies = []
    for layer, weights in zip(model.model.layers, own):
        if keep is not None and weights.index not in keep:
            copies.append(weights)
            continue
        qkv, o, gate_up, down = (fused_projection(fmt, group) for group in fused_groups(layer))
        dtype = compute_dtype(fmt, model.dtype)
        copies.append(LayerWeights(
            weights.index, weights.input_norm.detach().to(dtype), qkv, o,
            weights.post_norm.detach().to(dtype), gate_up, down,
            None if weights.q_norm is None else weights.q_norm.detach().to(dtype),
            None if weights.k_norm is None else weights.k_norm.detach().to(dtype)))
    return copies


def head_projection(model, fmt: str, token_ids: torch.Tensor | None) -> Projection:
    """The vocabulary projection, restricted to `token_ids` rows when given (a truncated draft
    vocabulary), in `fmt`. float32 over the full vocabulary is the model's own, uncopied."""
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if token_ids is not None:
        rows = token_ids.to(weight.device)
        weight, bias = weight[rows], None if bias is None else bias[rows]
    if fmt == "float32" and token_ids is None:
        return linear(model, head)
    return projection(fmt, [weight], [bias])
