"""Which kernel runs a float32 target's linear layers on a CPU.

A verification forward of 1 + k tokens is, on a CPU, mostly the target's matrix products with
1 + k rows, and speculation pays only where a few more rows cost little more than one. torch's
float32 `F.linear` calls MKL, whose small-row paths differ by CPU: on a 2-core Intel Xeon one row
of the default model's layers costs 18.5 ms and four 31.9 ms; on a 2-core AMD EPYC (Zen 4) one
row costs 34.5 ms and two 58.6 ms, so that verifying one draft token there costs 1.7 plain steps.
oneDNN, which torch also ships, computes the same float32 products (no lower-precision
arithmetic; only the order of the additions differs, as between any two kernels) and on that
EPYC takes 20.5-27.6 ms for 1-4 rows on the weights as they are, or 13.6-20.7 ms on weights
reordered once into its blocked layout (docs/benchmarks.md, "Which kernel runs the target's
products").

`linear_kernel` (the pipeline's `target.linear_kernel`) chooses, per target model:

- `torch`: `F.linear` as Hugging Face runs it;
- `onednn`: oneDNN on the weights as they are (no memory);
- `onednn_packed`: oneDNN on a reordered copy of every linear weight (the weights' memory once
  more: the model's own weights stay, for everything else that reads them);
- `auto`: on a CPU with a float32 target, times the three on the model's own weights and takes
  the fastest (the copy only where it takes at most a quarter of the memory available); `torch`
  elsewhere, and for models so small that the products do not decide a step.

The chosen kernels run only inside the target's forwards through specdec's `CausalLMRunner`
(verification, prefill, cost measurement) and drafters that ask for them: `LinearKernels.installed`
puts them on the model's plain `nn.Linear` layers for the forward and takes them off after, so
the model object stays what Hugging Face made it for `model.generate` (except for another
thread calling it during one of specdec's forwards). They are inference-only: no gradients flow
through them. A weight changed after configuring (in place or replaced) is noticed at the next
forward and its kernel rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Iterator

import torch

from specdec.config import LINEAR_KERNELS as MODES
from specdec.errors import ConfigError

logger = logging.getLogger(__name__)

#: Rows oneDNN's reordered weights are laid out for: a verification of a few draft tokens
#: (on the EPYC above, weights reordered for 4 rows ran 1-16 rows as fast as any other layout).
PACK_ROWS = 4
#: Below this many bytes of linear weights `auto` keeps `torch` without timing: per-call
#: overheads, not the products, decide such a model's step (and tests on tiny models keep
#: Hugging Face's own kernels).
AUTO_MIN_BYTES = 16 << 20
#: `auto` times the products of the first linear layers up to this many bytes of weights: more
#: than a CPU's cache, so that the weights come from memory as in a real forward.
AUTO_TIMED_BYTES = 256 << 20
#: `auto` keeps `torch` unless another kernel is at least this much faster (timing noise).
AUTO_MARGIN = 0.05
#: Rows `auto` times: a plain step and the verification of a few draft tokens.
AUTO_ROWS = (1, 4)


def onednn_available() -> bool:
    """Whether this torch build can run linear layers through oneDNN."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def float32_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's linear layers that a oneDNN kernel could run: plain `nn.Linear` products
    (neither a subclass with its own forward nor a module whose forward was replaced) with float32
    weights on a CPU."""
    return [module for module in model.modules() if isinstance(module, torch.nn.Linear)
            and type(module).forward is torch.nn.Linear.forward and "forward" not in module.__dict__
            and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32]


def onednn_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  reorder: bool = False) -> "OneDNNLinear":
    """oneDNN's float32 product `x @ weight^T + bias` for inputs `[..., in]` (inference only).

    :param reorder: run on a copy of the weight laid out in oneDNN's blocked format (for
        `PACK_ROWS` rows), made now; else on the weight itself.
    """
    return OneDNNLinear(weight, bias, reorder)


class OneDNNLinear:
    """A callable oneDNN product that remembers which tensors (and versions) it was made from,
    so that a changed weight can be noticed and the product rebuilt in place (`refresh`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, reorder: bool):
        self.reorder = reorder
        self._run = torch.ops.mkldnn._linear_pointwise
        self.refresh(weight, bias)

    def refresh(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.sources = (weight, bias)
        self.versions = tuple(None if tensor is None else tensor._version for tensor in self.sources)
        detached = weight.detach()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(detached, PACK_ROWS) if self.reorder else detached
        self.bias = None if bias is None else bias.detach()

    def current(self, parameters: dict) -> bool:
        """Whether it still computes with the weight and bias of a module's `_parameters` as they
        are now (read from the dict: `module.weight` goes through `nn.Module.__getattr__`, which
        for every layer of a model at every forward would cost 0.15 ms)."""
        weight, bias = self.sources
        return (parameters["weight"] is weight and parameters.get("bias") is bias
                and weight._version == self.versions[0] and (bias is None or bias._version == self.versions[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self.weight, self.bias, "none", [], "")


class LinearKernels:
    """oneDNN forwards for a model's plain float32 linear layers, on them only while installed.

    :param packed: run on weights reordered into oneDNN's blocked layout (a copy), rather than
        on the model's own.
    """

    def __init__(self, model: torch.nn.Module, packed: bool):
        self.mode = "onednn_packed" if packed else "onednn"
        self.forwards: dict[torch.nn.Linear, OneDNNLinear] = {
            module: onednn_linear(module.weight, module.bias, reorder=packed) for module in float32_linears(model)}
        self._lock = threading.Lock()
        self._depth = 0
        self._on: list[torch.nn.Linear] = []  # the modules it put its forward on

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The model's linear layers run these kernels inside the block (nesting and concurrent
        blocks keep them on until the last one ends). A module whose weight changed since gets
        its kernel rebuilt first; one whose forward someone else replaced meanwhile is left alone."""
        with self._lock:
            if self._depth == 0:
                for module, forward in self.forwards.items():
                    if "forward" in module.__dict__:
                        continue
                    if not forward.current(module._parameters):
                        with torch.no_grad():
                            forward.refresh(module.weight, module.bias)
                    module.__dict__["forward"] = forward  # an instance attribute, found before the class's
                    self._on.append(module)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for module in self._on:
                        module.__dict__.pop("forward", None)
                    self._on.clear()


_configuring = threading.Lock()
#: The kernels each configured model runs (None: torch's own), and the mode that was asked.
_configured: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, LinearKernels | None]]" = \
    weakref.WeakKeyDictionary()


def linear_kernels_for(model: torch.nn.Module) -> LinearKernels | None:
    """The kernels `configure_linear_kernel` chose for `model` (None: torch's own, or never
    configured)."""
    entry = _configured.get(model)
    return None if entry is None else entry[1]


def linear_forward(model: torch.nn.Module, module: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module`'s product on the kernel specdec runs `model`'s linear layers with, for a drafter
    that computes with the target's own layers outside its forward (layer-skip self-drafting).

    :param model: the configured model (`configure_linear_kernel`).
    :param module: one of its linear layers.
    :returns: the configured oneDNN product (inference only: no gradient reaches the weights),
        else `F.linear` on the module's weights.
    """
    kernels = linear_kernels_for(model)
    forward = None if kernels is None else kernels.forwards.get(module)
    if forward is not None:
        return forward
    weight, bias = module.weight, module.bias
    return lambda x: torch.nn.functional.linear(x, weight, bias)


def running_linear_kernels(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """A block in which `model`'s linear layers run the kernel `configure_linear_kernel` chose for
    it (nothing to do where that is torch's): specdec's own forwards of a configured model run in
    one.

    :returns: a context manager (`LinearKernels.installed`, or a null one)."""
    kernels = linear_kernels_for(model)
    return kernels.installed() if kernels is not None else contextlib.nullcontext()


def follow_linear_kernel(model: torch.nn.Module, like: torch.nn.Module) -> str:
    """Configure `model` (a drafter's own small model) to run the kernel `like` (its target) runs,
    where it can (float32 on a CPU; else torch's); its forwards then go in
    `running_linear_kernels(model)`.

    :returns: the kernel chosen (`torch`, `onednn` or `onednn_packed`)."""
    mode = linear_kernel_of(like)
    return configure_linear_kernel(model, "torch" if _onednn_unusable(model) else mode)


def linear_kernel_of(model: torch.nn.Module) -> str:
    """The kernel `model`'s linear layers run under specdec: `torch`, `onednn` or `onednn_packed`."""
    kernels = linear_kernels_for(model)
    return "torch" if kernels is None else kernels.mode


def configure_linear_kernel(model: torch.nn.Module, mode: str) -> str:
    """Choose the kernel `model`'s linear layers run in specdec's forwards (see the module
    docstring). A model several pipelines share is configured once: a later `auto` keeps the
    first choice, a different explicit mode is refused.

    :param mode: one of `MODES` (`target.linear_kernel`).
    :returns: the kernel chosen (`torch`, `onednn` or `onednn_packed`).
    :raises ConfigError: an unknown mode, an explicit oneDNN mode where it cannot run, or one that
        differs from the kernel the model already runs.
    """
    if mode not in MODES:
        raise ConfigError(f"linear_kernel must be one of {', '.join(MODES)}, not {mode!r}")
    with _configuring:  # two pipelines built at once on one model: one timing, one choice
        if model in _configured:
            asked, kernels = _configured[model]
            chosen = "torch" if kernels is None else kernels.mode
            if mode in ("auto", chosen, asked):
                return chosen
            raise ConfigError(f"the target model is shared with a pipeline whose target.linear_kernel is {asked!r}, "
                              f"which runs {chosen!r}; pipelines sharing one target model must agree: set "
                              f"linear_kernel to 'auto' or {chosen!r} in this one, or give it its own model")
        reason = None if mode in ("torch", "auto") else _onednn_unusable(model)
        if reason:
            raise ConfigError(f"linear_kernel {mode!r} {reason}; use 'torch' or 'auto'")
        chosen = _choose(model) if mode == "auto" else mode
        kernels = None if chosen == "torch" else LinearKernels(model, packed=chosen == "onednn_packed")
        _configured[model] = (mode, kernels)
        return chosen


def _onednn_unusable(model: torch.nn.Module) -> str | None:
    """Why oneDNN cannot run `model`'s linear layers (an explicit mode is refused with it, `auto`
    and `follow_linear_kernel` keep torch's), or None where it can."""
    if not onednn_available():
        return "needs oneDNN, which this torch build lacks (torch.backends.mkldnn.is_available() is False)"
    if getattr(model, "specdec_tp", None) is not None:
        return "does not apply to a tensor-parallel target (its sharded layers run torch's kernels)"
    if not float32_linears(model):
        parameter = next(model.parameters())
        return (f"runs float32 linear layers on a CPU; this model has none (device {parameter.device}, "
                f"dtype {parameter.dtype})")
    return None


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux `MemAvailable`), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _choose(model: torch.nn.Module) -> str:
    """`auto`: the fastest of the kernels that may run here, timed on the model's own weights."""
    if _onednn_unusable(model):
        return "torch"
    linears = float32_linears(model)
    total = sum(module.weight.nbytes for module in linears)
    if total < AUTO_MIN_BYTES or len(linears) != sum(isinstance(m, torch.nn.Linear) for m in model.modules()):
        return "torch"  # tiny, or some linear layers would stay on torch's kernel anyway
    timed, size = [], 0
    for module in linears:
        timed.append(module)
        size += module.weight.nbytes
        if size >= AUTO_TIMED_BYTES:
            break
    modes = ["torch", "onednn"]
    available = _available_memory()
    if available is not None and total <= available // 4:
        modes.append("onednn_packed")
    seconds = time_linear_kernels(timed, modes)
    best = min(seconds, key=seconds.get)
    chosen = best if seconds[best] < (1 - AUTO_MARGIN) * seconds["torch"] else "torch"
    logger.info("linear_kernel auto: %s (seconds per pass over %d layers at rows %s: %s)", chosen, len(timed),
                AUTO_ROWS, {mode: round(value, 5) for mode, value in seconds.items()})
    return chosen


@torch.inference_mode()
def time_linear_kernels(modules: list[torch.nn.Linear], modes: list[str], rows: tuple[int, ...] = AUTO_ROWS,
                        repeats: int = 3) -> dict[str, float]:
    """Seconds per pass over `modules`' products in each mode, summed over `rows` (median of
    `repeats` passes after one warm-up; the modes interleaved, so that load hits them alike)."""
    forwards = {"torch": [module.forward for module in modules]}
    for mode in modes:
        if mode != "torch":
            forwards[mode] = [onednn_linear(module.weight, module.bias, reorder=mode == "onednn_packed")
                              for module in modules]
    generator = torch.Generator().manual_seed(0)
    inputs = {(count, width): torch.randn(count, width, generator=generator)
              for count in rows for width in {module.in_features for module in modules}}
    times: dict[tuple[str, int], list[float]] = {(mode, count): [] for mode in modes for count in rows}
    for repeat in range(repeats + 1):
        for count in rows:
            for mode in modes:
                tic = time.perf_counter()
                for module, forward in zip(modules, forwards[mode]):
                    forward(inputs[count, module.in_features])
                if repeat:
                    times[mode, count].append(time.perf_counter() - tic)
    return {mode: sum(statistics.median(times[mode, count]) for count in rows) for mode in modes}
