"""Training scaffolding shared by the drafters that learn from a frozen target (Medusa heads,
EAGLE draft models and any later trained drafter); their training text is `specdec.training_data`.

One home for what every such recipe repeats, so that a fix to resuming, caching or the schedule
reaches all of them: refusing to overwrite a run, loading the target frozen, self-distillation
files, the features cache (the target is frozen, so its features are computed once and reused
while the inputs are the same) and a `CheckpointedTrainer` whose resumed run repeats an
uninterrupted one step for step.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from specdec import InputError, TokenSequence, distill, write_jsonl

CHECKPOINT_FILE = "checkpoint.pt"

T = TypeVar("T")


# -- the recipe's preparation ---------------------------------------------------------------------


def refuse_existing_run(out: Path, resume: bool) -> None:
    """A new run in a folder with a checkpoint would silently mix two runs: resuming is explicit."""
    if (out / CHECKPOINT_FILE).exists() and not resume:
        raise InputError(f"{out} already holds a training checkpoint: pass --resume to continue it, "
                         f"or choose a new output folder")


def load_frozen_target(model_name: str | None, times: dict[str, float]):
    """The target with gradients off (it only supplies features); records `load_model_s`.

    :returns: `(model, tokenizer, name)`, `name` being the model asked for or the default one.
    """
    from specdec import DEFAULT_MODEL, load_model

    started = time.perf_counter()
    model, tokenizer = load_model(model_name)
    model.requires_grad_(False)
    times["load_model_s"] = round(time.perf_counter() - started, 1)
    return model, tokenizer, model_name or DEFAULT_MODEL


def distilled_file(folder: Path, temperature: float) -> Path:
    return folder / f"distill-T{temperature:g}.jsonl"


def self_distil(model, tokenizer, conversations: Sequence[Sequence[dict]], out: Path, *,
                temperatures: Sequence[float], times: dict[str, float], log: Callable[[str], None],
                **options: Any) -> list[str]:
    """The target's own answers, one file per temperature, each kept once written (distillation is
    the slowest stage, so an interrupted run must not redo it); records `distill_s`.

    :param options: passed to `specdec.distill` (`max_new_tokens`, `batch_size`, `seed`, `progress`).
    :returns: the files, in the order of `temperatures`.
    """
    files = []
    started = time.perf_counter()
    for temperature in temperatures:
        path = distilled_file(out, temperature)
        if not path.is_file():
            log(f"self-distillation: {len(conversations)} prompts at temperature {temperature:g} -> {path}")
            write_jsonl(distill(model, tokenizer, conversations, temperature=temperature, **options), path)
        files.append(str(path))
    times["distill_s"] = round(time.perf_counter() - started, 1)
    return files


# -- the features cache ---------------------------------------------------------------------------


def features_cache_key(signature: dict, sequences: Sequence[TokenSequence], detail: str) -> str:
    """Identifies a features computation: the target, the text and `detail` (what else the
    drafter's features depend on, e.g. the layers read)."""
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode())
    digest.update(detail.encode())
    for sequence in sequences:
        digest.update(json.dumps([sequence.token_ids, sequence.spans]).encode())
    return digest.hexdigest()[:24]


def save_atomically(state: dict, path: Path) -> None:
    """`torch.save` through a `.partial` file, so an interrupted write never leaves a torn file
    that a resumed run would trust."""
    temporary = path.with_name(path.name + ".partial")
    torch.save(state, temporary)
    temporary.replace(path)


class SavedTensors:
    """Mixin for a dataclass of tensors kept in one file with the key of the inputs it was made
    from (`features_cache_key`); the file holds `key` and every field by name."""

    def save(self, path: str | Path, key: str) -> None:
        save_atomically({"key": key, **{field.name: getattr(self, field.name) for field in fields(self)}}, Path(path))

    @classmethod
    def load(cls: type[T], path: str | Path, key: str) -> T | None:
        """The saved tensors, or None when there are none or they were made from other inputs."""
        path = Path(path)
        if not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("key") != key:
            return None
        return cls(**{field.name: data[field.name] for field in fields(cls)})


def cached_features(kind: type[T], path: Path, key: str, compute: Callable[[], T], times: dict[str, float]) -> T:
    """`kind.load(path, key)`, else `compute()` saved there; records `features_s`."""
    started = time.perf_counter()
    data = kind.load(path, key)
    if data is None:
        data = compute()
        data.save(path, key)
    times["features_s"] = round(time.perf_counter() - started, 1)
    return data


def length_batches(sequences: Sequence[TokenSequence], batch_tokens: int) -> list[list[int]]:
    """Sequence indices in batches of similar lengths, at most `batch_tokens` padded tokens each
    (a longer sequence goes alone), for one pass of the target over the training text."""
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index].token_ids))
    batches: list[list[int]] = []
    for index in order:
        length = len(sequences[index].token_ids)
        if batches and (len(batches[-1]) + 1) * length <= batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def right_padded(sequences: Sequence[TokenSequence], batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids [B, S]` and `attention_mask [B, S]` of one batch; with right padding the causal mask
    keeps padding out of every real position."""
    width = max(len(sequences[index].token_ids) for index in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, index in enumerate(batch):
        tokens = sequences[index].token_ids
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


# -- training -------------------------------------------------------------------------------------


def training_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" = bfloat16 where the hardware multiplies it natively (CUDA, CPUs with AMX or
    AVX512-BF16), float32 elsewhere."""
    if name in ("float32", "bfloat16"):
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return torch.bfloat16 if any(getattr(cpu, check, lambda: False)() for check in checks) else torch.float32


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_fraction` of the steps, then cosine decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class CheckpointedTrainer:
    """The loop, schedule and checkpoints of a drafter's training; a subclass supplies the loss.

    `checkpoint.pt` in `folder` holds the settings, step, training seconds, the module's state
    (under `module_key`), the optimizer's and the schedule's. A resumed run continues from the
    saved step and, as long as `loss(step)` depends only on the step, ends as an uninterrupted
    one would. `config` is the run's frozen dataclass of settings, with `dtype` and
    `warmup_fraction` among them.
    """

    module_key = "model"  # the module's name in the checkpoint
    description = "training"  # the progress bar's

    def __init__(self, config, module: torch.nn.Module, optimizer: torch.optim.Optimizer, total_steps: int,
                 folder: str | Path, device: torch.device | str):
        self.config = config
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = training_dtype(config.dtype, self.device)
        self.module = module
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.scheduler = warmup_cosine(optimizer, total_steps, config.warmup_fraction)
        self.step = 0
        self.seconds = 0.0  # training time over all sessions of this run

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def loss(self, step: int) -> torch.Tensor:
        """The loss of training step `step`, to be minimised."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """Held-out accuracy of the trained module, in the drafter's own terms."""
        raise NotImplementedError

    def clip_gradients(self) -> None:
        """Called between the backward pass and the optimizer's step; nothing by default."""

    def save_checkpoint(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_atomically({"config": asdict(self.config), "step": self.step, "seconds": self.seconds,
                         self.module_key: self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict()}, self.checkpoint_path)

    def resume(self) -> bool:
        """Continue from the folder's checkpoint when there is one; False when starting fresh."""
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if state["config"] != asdict(self.config):
            changed = sorted(key for key in state["config"] if state["config"][key] != asdict(self.config).get(key))
            raise InputError(f"the checkpoint in {self.folder} was made with other training settings "
                             f"({', '.join(changed)}); resume with the same settings or use a new folder")
        self.module.load_state_dict(state[self.module_key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.seconds = state["step"], state["seconds"]
        return True

    def train(self, *, checkpoint_every: int = 200, progress: bool = True, max_steps: int | None = None) -> None:
        """Run until the last step (or `max_steps` more steps), checkpointing on the way."""
        from tqdm import tqdm

        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        self.module.train()
        with tqdm(total=self.total_steps, initial=self.step, desc=self.description, unit="step",
                  disable=not progress) as bar:
            while self.step < stop:
                started = time.perf_counter()
                loss = self.loss(self.step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.clip_gradients()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self.seconds += time.perf_counter() - started
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if self.step % checkpoint_every == 0 or self.step == stop:
                    self.save_checkpoint()
        self.module.eval()

    def run(self, summary: str, *, resume: bool, checkpoint_every: int, progress: bool,
            log: Callable[[str], None], times: dict[str, float]) -> dict[str, Any]:
        """A recipe's training stage: resume when asked, log `summary`, train to the end, evaluate;
        records `train_s` (over all sessions of the run) and `eval_s`.

        :returns: what `evaluate` returns.
        """
        if resume and self.resume():
            log(f"resuming at step {self.step} of {self.total_steps}")
        log(summary)
        self.train(checkpoint_every=checkpoint_every, progress=progress)
        times["train_s"] = round(self.seconds, 1)
        started = time.perf_counter()
        accuracy = self.evaluate()
        times["eval_s"] = round(time.perf_counter() - started, 1)
        return accuracy
