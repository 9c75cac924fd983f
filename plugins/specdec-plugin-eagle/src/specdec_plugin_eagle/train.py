"""Training the draft model on the frozen target's features.

Losses, per level of the unrolled draft (below): token cross-entropy on the next-next token (over
the draft vocabulary; the distilled text's own tokens are the target's samples, so hard labels
match the target's distribution in expectation) plus, for `eagle1`, the EAGLE feature regression
(smooth L1 between the predicted and the target's real feature), `loss = regression +
token_weight * cross-entropy` (EAGLE-1's weighting). Inputs get uniform noise, scaled to the
features' spread, as EAGLE does, so the model tolerates its own imprecise features.

*Levels* (EAGLE-3's training-time test): level 1 reads the target's features; level m reads the
draft's own level m - 1 output at each position, attending to the real entries before the chain
and to the chain's own entries, exactly the cache a step of drafting m deep builds. Training on
several levels teaches deep drafting; evaluation unrolls as many levels as the drafter drafts and
reports, per depth, the held-out share of positions whose whole chain of top-1 tokens is right
(what a greedy chain would have accepted).

Checkpoints (`checkpoint.pt`: model, optimizer, schedule, step) are written every
`checkpoint_every` steps; a resumed run repeats the same data order from the saved step.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from specdec import CheckpointedTrainer, InputError

from specdec_plugin_eagle.features import FeatureSet
from specdec_plugin_eagle.model import EagleDraftModel

IGNORE = -100


@dataclass(frozen=True)
class TrainConfig:
    levels: int = 2
    epochs: float = 3.0
    batch_tokens: int = 2048
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    token_weight: float = 0.1  # eagle1: weight of the cross-entropy next to the regression
    level_decay: float = 0.8  # weight of level m is level_decay ** (m - 1)
    noise: float = 0.1  # uniform input noise, as a fraction of the features' spread
    eval_fraction: float = 0.05
    eval_depth: int = 6
    seed: int = 0
    dtype: str = "auto"  # "float32", "bfloat16" or "auto"


def unroll(model: EagleDraftModel, tokens: torch.Tensor, features: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Outputs `[B, S, H]` of each level (see the module docstring); `tokens` `[B, S]`, `features`
    `[B, S, F]`. Level m's row i sits at position i + m - 1, reads the token at i + m and predicts
    the feature there (so its logits draft the token at i + m + 1)."""
    batch, length = tokens.shape
    device = tokens.device
    positions = torch.arange(length, device=device)[None].expand(batch, length)
    shifted = [torch.cat((tokens[:, m:], tokens.new_zeros(batch, m)), dim=1) for m in range(levels + 1)]
    first = model.qkv(shifted[1], model.project_features(features), positions)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    output = model.finish(F.scaled_dot_product_attention(first.q, first.k, first.v, attn_mask=causal,
                                                          enable_gqa=True), first.residual)
    outputs = [output]
    repeat = model.config.num_attention_heads // model.config.num_key_value_heads
    keys, values = first.k.repeat_interleave(repeat, 1), first.v.repeat_interleave(repeat, 1)  # [B, h, S, D]
    chain_keys, chain_values = [], []
    scale = model.config.head_dim ** -0.5
    for level in range(2, levels + 1):
        parts = model.qkv(shifted[level], output, positions + level - 1)
        chain_keys.append(parts.k.repeat_interleave(repeat, 1))
        chain_values.append(parts.v.repeat_interleave(repeat, 1))
        scores = (parts.q @ keys.transpose(-1, -2)) * scale  # [B, h, S, S]
        scores = scores.masked_fill(~causal, float("-inf"))
        own = torch.stack([(parts.q * key).sum(-1) * scale for key in chain_keys], dim=-1)  # [B, h, S, m - 1]
        weights = torch.softmax(torch.cat((scores, own), dim=-1).float(), dim=-1).to(parts.q.dtype)
        attended = weights[..., :length] @ values
        for index, value in enumerate(chain_values):
            attended = attended + weights[..., length + index, None] * value
        output = model.finish(attended, parts.residual)
        outputs.append(output)
    return outputs


def split_by_sequence(count: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Sequence indices of the training and held-out parts."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = int(round(count * eval_fraction)) if eval_fraction > 0 else 0
    if eval_fraction > 0 and count > 1:
        held = min(max(held, 1), count - 1)
    return sorted(order[held:]), sorted(order[:held])


class Batches:
    """Sequences packed into padded batches of about `batch_tokens` tokens, one fixed shuffle per
    epoch (so a resumed run sees the same batches).

    How many batches an epoch packs depends on its shuffle (lengths are packed within windows of
    it), so epochs differ in size: `schedule` counts each epoch's own."""

    def __init__(self, data: FeatureSet, indices: list[int], batch_tokens: int, seed: int):
        self.data, self.indices, self.seed = data, indices, seed
        self.batch_tokens = batch_tokens

    def schedule(self, epochs: float) -> list[int]:
        """Batches taken from each epoch of a run of `epochs` (the last one possibly in part)."""
        whole, part = divmod(epochs, 1.0)
        sizes = [len(self.epoch(number)) for number in range(int(whole))]
        if part > 0:
            sizes.append(math.ceil(part * len(self.epoch(int(whole)))))
        return sizes

    def epoch(self, number: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + number)
        shuffled = [self.indices[i] for i in torch.randperm(len(self.indices), generator=generator).tolist()]
        # similar lengths together within windows of the shuffle: less padding, still random
        window = 64
        batches: list[list[int]] = []
        for start in range(0, len(shuffled), window):
            chunk = sorted(shuffled[start:start + window], key=self.data.length)
            current: list[int] = []
            for index in chunk:
                width = max([self.data.length(i) for i in current + [index]])
                if current and width * (len(current) + 1) > self.batch_tokens:
                    batches.append(current)
                    current = []
                current.append(index)
            if current:
                batches.append(current)
        return batches

    def tensors(self, batch: list[int], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens `[B, S]`, features `[B, S, F]`, learned `[B, S]`, real `[B, S]` (not padding)."""
        width = max(self.data.length(index) for index in batch)
        size = self.data.features.shape[1]
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        features = torch.zeros(len(batch), width, size, dtype=torch.float32)
        learned = torch.zeros(len(batch), width, dtype=torch.bool)
        real = torch.zeros(len(batch), width, dtype=torch.bool)
        for row, index in enumerate(batch):
            ids, feats, flags = self.data.sequence(index)
            tokens[row, : len(ids)] = ids
            features[row, : len(ids)] = feats.float()
            learned[row, : len(ids)] = flags
            real[row, : len(ids)] = True
        return tokens.to(device), features.to(device), learned.to(device), real.to(device)


def draft_rows(model: EagleDraftModel) -> torch.Tensor:
    """`[V]` the draft vocabulary row of each target token, IGNORE where it has none."""
    rows = torch.full((model.config.vocab_size,), IGNORE, dtype=torch.long, device=model.draft_ids.device)
    rows[model.draft_ids] = torch.arange(model.config.draft_vocab_size, device=rows.device)
    return rows


def level_losses(model: EagleDraftModel, outputs: list[torch.Tensor], tokens: torch.Tensor, features: torch.Tensor,
                 learned: torch.Tensor, real: torch.Tensor, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(cross-entropy, regression or None) of each level."""
    length = tokens.shape[1]
    losses = []
    for level, output in enumerate(outputs, start=1):
        labels = torch.full_like(tokens, IGNORE)
        ahead = level + 1  # level m's row i drafts the token at i + m + 1
        if ahead < length:
            target = tokens[:, ahead:]
            valid = learned[:, ahead:] & real[:, ahead:]
            labels[:, :-ahead] = torch.where(valid, rows[target], IGNORE)
        logits = model.logits(output).float()
        if bool((labels != IGNORE).any()):
            cross = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
        else:
            cross = logits.sum() * 0.0
        regression = None
        if model.config.style == "eagle1" and level < length:
            mask = (real[:, level:] & real[:, :-level])[..., None]  # predicted feature of position i + m
            diff = F.smooth_l1_loss(output[:, :-level].float(), features[:, level:], reduction="none")
            regression = (diff * mask).sum() / (mask.sum() * diff.shape[-1]).clamp(min=1)
        losses.append((cross, regression))
    return losses


@torch.no_grad()
def evaluate(model: EagleDraftModel, data: FeatureSet, indices: list[int], *, depth: int = 6,
             batch_tokens: int = 2048) -> dict[str, Any]:
    """Held-out accuracy per depth (see the module docstring): `chain[d]` = share of positions
    whose top-1 tokens at depths 1..d are all right, `conditional[d]` = chain[d] / chain[d - 1],
    and `top1[d]` = depth d right whatever came before."""
    model.eval()
    device = model.draft_ids.device
    rows = draft_rows(model)
    all_right = torch.zeros(depth, dtype=torch.float64)
    right = torch.zeros(depth, dtype=torch.float64)
    counted = 0
    batches = Batches(data, indices, batch_tokens, 0)
    dtype = next(model.parameters()).dtype
    for batch in batches.epoch(0):
        tokens, features, learned, real = batches.tensors(batch, device)
        outputs = unroll(model, tokens, features.to(dtype), depth)
        length = tokens.shape[1]
        if length <= depth + 1:
            continue
        usable = length - depth - 1
        chain = torch.ones(tokens.shape[0], usable, dtype=torch.bool, device=device)
        valid = torch.ones_like(chain)
        for level, output in enumerate(outputs, start=1):
            predicted = model.draft_ids[model.logits(output[:, :usable]).argmax(-1)]
            target = tokens[:, level + 1: level + 1 + usable]
            valid &= learned[:, level + 1: level + 1 + usable] & real[:, level + 1: level + 1 + usable]
            hit = predicted == target
            chain &= hit
            right[level - 1] += float((hit & valid).sum())
            all_right[level - 1] += float((chain & valid).sum())
        counted += int(valid.sum())
    del rows
    chain_rate = (all_right / max(counted, 1)).tolist()
    conditional = [chain_rate[0]] + [chain_rate[d] / chain_rate[d - 1] if chain_rate[d - 1] else 0.0
                                     for d in range(1, depth)]
    return {"positions": counted, "chain": [round(v, 4) for v in chain_rate],
            "conditional": [round(v, 4) for v in conditional],
            "top1": [round(v, 4) for v in (right / max(counted, 1)).tolist()],
            "expected_chain_tokens": round(1.0 + sum(chain_rate), 3)}


class Trainer(CheckpointedTrainer):
    """Trains `model` on `data`, checkpointing into `folder` (see the module docstring)."""

    module_key = "model"
    description = "training the draft model"

    def __init__(self, config: TrainConfig, model: EagleDraftModel, data: FeatureSet, folder: str | Path,
                 device: torch.device | str = "cpu"):
        device = torch.device(device)
        self.model = model.to(device).train()
        self.data = data
        self.train_index, self.eval_index = split_by_sequence(data.num_sequences, config.eval_fraction, config.seed)
        if not self.train_index:
            raise InputError("no training sequences left after holding out the evaluation share")
        self.batches = Batches(data, self.train_index, config.batch_tokens, config.seed)
        self.epoch_starts = list(itertools.accumulate(self.batches.schedule(config.epochs), initial=0))
        self.rows = draft_rows(self.model)
        self.spread = float(data.features[: 200_000].float().std())
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay,
                                      betas=(0.9, 0.95))
        super().__init__(config, self.model, optimizer, max(1, self.epoch_starts[-1]), folder, device)
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def batch(self, step: int) -> list[int]:
        epoch = bisect.bisect_right(self.epoch_starts, step) - 1
        offset = step - self.epoch_starts[epoch]
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, self.batches.epoch(epoch))
        return self._epoch_cache[1][offset]

    def loss(self, step: int) -> torch.Tensor:
        config = self.config
        tokens, features, learned, real = self.batches.tensors(self.batch(step), self.device)
        # noise drawn from the step number: a resumed run adds the same noise
        generator = torch.Generator(self.device).manual_seed(config.seed * 1_000_003 + step)
        uniform = torch.rand(features.shape, generator=generator, device=self.device)
        noisy = features + (uniform - 0.5) * (2 * config.noise * self.spread)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            outputs = unroll(self.model, tokens, noisy, config.levels)
        total = features.new_zeros(())
        for level, (cross, regression) in enumerate(level_losses(self.model, outputs, tokens, features, learned,
                                                                 real, self.rows)):
            term = cross if regression is None else regression + config.token_weight * cross
            total = total + config.level_decay ** level * term
        return total

    def clip_gradients(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)

    def evaluate(self, depth: int | None = None) -> dict[str, Any]:
        indices = self.eval_index or self.train_index
        return evaluate(self.model, self.data, indices, depth=depth or self.config.eval_depth,
                        batch_tokens=self.config.batch_tokens)
