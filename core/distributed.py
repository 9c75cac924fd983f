"""Tensor-parallel targets on `torch.distributed`: one process per device, launched by `torchrun`.

specdec does not run its own distributed runtime. Every rank runs the same pipeline (SPMD): the
same drafters, replicated, propose the same drafts; the sharded target's forward exchanges
partial sums through PyTorch's collectives (transformers' tensor-parallel plan, or
`parallelize_module` with the Megatron split for a model that has no plan); the full-vocabulary
logits come out identical on every rank, so the same seeded acceptance decisions follow. Tree
masks, positions and the KV cache (of the rank's own heads) stay local to each rank.

What this module adds is what keeps SPMD honest: a clear error when the launch, the model's head
counts or the ranks' pipelines do not fit together, a shared seed for unseeded requests, a check
that the ranks' outputs agree, and a timeout on every collective, so that a rank that fails or
hangs takes the job down instead of leaving the others waiting forever.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import pickle
import random
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from specdec.errors import ConfigError, GenerationError, ModelMismatchError
from specdec.launch import launched_ranks

#: Seconds a collective may wait for the other ranks before the job fails (SPECDEC_TP_TIMEOUT):
#: long enough for a large checkpoint to load on every rank, short enough that a hung rank is noticed.
DEFAULT_TIMEOUT_S = 600.0

#: transformers' tensor-parallel styles for a Llama-shaped decoder (the Megatron split), applied
#: with `parallelize_module` when a model class brings no plan of its own.
MEGATRON_PLAN = {"self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise", "self_attn.v_proj": "colwise",
                 "self_attn.o_proj": "rowwise", "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise",
                 "mlp.down_proj": "rowwise"}


def collective_timeout_seconds() -> float:
    """The collective timeout: $SPECDEC_TP_TIMEOUT seconds, else `DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get("SPECDEC_TP_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"SPECDEC_TP_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group: `rank` of `size`, computing on `device`."""

    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that prints, writes results and answers requests."""
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object)."""
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def check_same(self, value: Any, what: str) -> None:
        """Raise on every rank unless all ranks hold an equal `value` (compared by a digest).

        SPMD only works while every rank takes the same decisions from the same inputs; a rank
        with another pipeline file or prompt would send collectives of other shapes and hang or
        decode garbage. One small all-gather per call.
        """
        digest = hashlib.sha256(pickle.dumps(value, protocol=4)).hexdigest()[:16]
        digests: list[str | None] = [None] * self.size
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            groups: dict[str, list[int]] = {}
            for rank, seen in enumerate(digests):
                groups.setdefault(str(seen), []).append(rank)
            split = "; ".join(f"ranks {', '.join(map(str, ranks))} agree" for ranks in groups.values())
            raise ConfigError(f"the ranks disagree on {what} ({split}): every rank of a tensor-parallel job "
                              f"must run the same pipeline on the same requests; launch them all with the same "
                              f"files and arguments")

    def shared_seed(self) -> int:
        """A fresh random seed drawn on rank 0, the same on every rank (for requests without one)."""
        return int(self.broadcast(random.SystemRandom().randrange(1 << 63) if self.is_main else None))

    def collective_failed(self, error: BaseException) -> GenerationError:
        """The error a rank raises when its sharded forward fails: most often because another rank
        failed, exited or hung, which that rank's own message explains."""
        return GenerationError(
            f"rank {self.rank} of {self.size}: the sharded target's forward failed ({type(error).__name__}: "
            f"{str(error).strip()[:300]}). Usually another rank failed or stopped answering: look for its "
            f"message above. A rank that is only slow needs a longer SPECDEC_TP_TIMEOUT (now "
            f"{collective_timeout_seconds():g} s)")

    def check_outputs(self, tokens: list[int]) -> None:
        """Raise if the ranks generated different tokens (a drafter whose proposals depend on
        timing or on this process's own randomness breaks SPMD)."""
        try:
            self.check_same(tokens, "the generated tokens")
        except ConfigError as error:
            raise GenerationError(f"{error}. A drafter or policy made a rank-local decision (timing, unseeded "
                                  f"randomness); see docs/scaling.md") from None


def start(tp_size: int, device: str) -> TensorParallel:
    """Join the tensor-parallel group of a `torchrun --nproc-per-node tp_size` launch (once per process).

    The backend is NCCL on CUDA and gloo on a CPU; every collective times out after
    `collective_timeout_seconds()`.
    """
    world = launched_ranks()
    if world is None:
        raise ConfigError(f"target.tp_size is {tp_size}: launch specdec under torchrun, one process per "
                          f"device, e.g. `torchrun --nproc-per-node {tp_size} -m specdec.cli generate ...` "
                          f"(docs/scaling.md)")
    if world != tp_size:
        raise ConfigError(f"target.tp_size is {tp_size} but torchrun started {world} processes; pass "
                          f"--nproc-per-node {tp_size} (× the number of machines) or set tp_size to {world}")
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    kind = "cpu" if accelerator is None else accelerator.type
    if device not in ("auto", kind) and device.split(":")[0] != kind:
        raise ConfigError(f"target.device is {device!r}, but a tensor-parallel target runs on this machine's "
                          f"{kind} (one device per rank, chosen by LOCAL_RANK); set target.device to auto "
                          f"or {kind}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cpu") if kind == "cpu" else torch.device(kind, local_rank)
    if not torch.distributed.is_initialized():
        if kind == "cuda":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(
            "nccl" if kind == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=collective_timeout_seconds()),
            **({"device_id": target} if kind == "cuda" else {}))
        atexit.register(_leave)
    return TensorParallel(torch.distributed.get_rank(), torch.distributed.get_world_size(), target)


def _leave() -> None:
    """Destroy the process group before the interpreter exits (registered with atexit).

    Best effort, for scripts that end without `exit_rank`: the group's objects may outlive this
    (a sharded model keeps them), and then the process can still abort as `exit_rank` explains.
    """
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def exit_rank(code: int = 0) -> NoReturn:
    """End this process of a tensor-parallel job with exit status `code`; `sys.exit` elsewhere.

    A normal interpreter exit can abort a rank ("terminate called without an active exception",
    status -6) after all its work succeeded: each gloo collective is released by a gloo worker
    thread, and when that release comes after the interpreter began finalizing, the thread cannot
    take the GIL to free the collective's tensors and C++ terminates the process. Destroying the
    process group does not prevent it while a sharded model still holds the group. So a rank ends
    here: after a successful run, a barrier (no rank leaves while another still receives its last
    collective), then the group is destroyed, stdout and stderr are flushed and the process exits
    at once, without finalization. After a failure there is no barrier: the other ranks may be
    stuck in a collective that this rank will never join.
    """
    if not torch.distributed.is_initialized():
        sys.exit(code)
    try:
        if code == 0:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    except Exception as error:  # noqa: BLE001 - another rank is gone; leave with this rank's status anyway
        print(f"specdec: rank {torch.distributed.get_rank()}: leaving the tensor-parallel group failed: "
              f"{type(error).__name__}: {str(error).strip()[:300]}", file=sys.stderr)
        code = code or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to deliver
            pass
    os._exit(code)


def check_divisible(config, tp_size: int) -> None:
    """Refuse a `tp_size` that does not split the model's heads (and MLP) into equal shards.

    Each rank computes `heads / tp_size` query heads and `kv_heads / tp_size` key/value heads,
    and caches only those; an uneven split has no rank-local attention.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    intermediate = int(getattr(config, "intermediate_size", 0) or 0)
    bad = [f"{count} {name}" for count, name in ((heads, "attention heads"), (kv_heads, "key/value heads"),
                                                 (intermediate, "MLP channels")) if count and count % tp_size]
    if bad:
        choices = [size for size in range(1, kv_heads + 1) if heads % size == 0 and kv_heads % size == 0
                   and (not intermediate or intermediate % size == 0)]
        raise ConfigError(f"target.tp_size {tp_size} does not divide the model's {' and '.join(bad)}; "
                          f"use one of: {', '.join(map(str, choices))}")


def has_plan(config) -> bool:
    """Whether transformers knows how to shard this model (a `base_model_tp_plan`)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(config, "base_model_tp_plan", None))


def megatron_parallelize(model: torch.nn.Module, tp: TensorParallel) -> torch.nn.Module:
    """Shard a Llama-shaped decoder without a transformers plan: q/k/v and gate/up column-wise,
    o and down row-wise (one all-reduce after attention and one after the MLP per layer), with
    `torch.distributed.tensor.parallel.parallelize_module`. Embeddings, norms and the LM head stay
    replicated (full-vocabulary logits on every rank).

    Raises `ModelMismatchError` when a decoder layer lacks one of the seven projections.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    layers = _decoder_layers(model)
    missing = sorted({name for layer in layers for name in MEGATRON_PLAN if _submodule(layer, name) is None})
    if not layers or missing:
        raise ModelMismatchError(
            f"{type(model).__name__} has no tensor-parallel plan in transformers, and its decoder layers lack "
            f"the projections specdec can shard without one ({', '.join(missing) or 'no decoder layers found'}); "
            f"run it with target.tp_size 1")
    mesh = init_device_mesh(tp.device.type, (tp.size,))
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    for layer in layers:
        parallelize_module(layer, mesh, {name: styles[style]() for name, style in MEGATRON_PLAN.items()})
    return model


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def _submodule(module: torch.nn.Module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def local_heads(model: torch.nn.Module, heads: int) -> int:
    """The key/value heads this rank holds: `heads` over the model's tensor-parallel size."""
    tp = getattr(model, "specdec_tp", None)
    return heads if tp is None else heads // tp.size
