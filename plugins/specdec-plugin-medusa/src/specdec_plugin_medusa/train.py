"""Medusa-1 training: the target stays frozen, only the heads learn, on precomputed hidden states.

Loss: `sum_k decay**k * CE(head_k(h_p), token p + k + 2)` over training positions (the decay
weights, 0.8 by default, follow the Medusa-2 recipe; later heads are harder and matter less).
AdamW with linear warmup then cosine decay. Positions from a held-out share of the sequences are
kept out of training and give the reported accuracy: for every head and rank r, the share of
positions whose right token is the head's r-th most likely one (`per_rank`); top-k accuracy is
the sum over the first k ranks. `per_rank` is what `derive_tree` needs.

Checkpoints (`checkpoint.pt`: heads, optimizer, schedule, step) are written every
`checkpoint_every` steps; a resumed run continues the same data order from the saved step and
ends with the same heads as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from specdec import CheckpointedTrainer, InputError

from specdec_plugin_medusa.features import IGNORE, Features
from specdec_plugin_medusa.heads import HeadsConfig, MedusaHeads

@dataclass(frozen=True)
class TrainConfig:
    num_heads: int = 4
    num_layers: int = 1
    own_lm_head: bool = False
    epochs: float = 2.0
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    head_decay: float = 0.8
    eval_fraction: float = 0.05
    top_k: int = 10
    seed: int = 0
    dtype: str = "auto"  # matmul precision: "float32", "bfloat16" or "auto"


def split_by_sequence(features: Features, eval_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Position indices of the training and held-out parts, split by whole sequences."""
    sequences = torch.unique(features.sequence)
    generator = torch.Generator().manual_seed(seed)
    shuffled = sequences[torch.randperm(len(sequences), generator=generator)]
    count = int(round(len(sequences) * eval_fraction)) if eval_fraction > 0 else 0
    if eval_fraction > 0 and len(sequences) > 1:
        count = min(max(count, 1), len(sequences) - 1)
    held_out = torch.isin(features.sequence, shuffled[:count])
    return (~held_out).nonzero().squeeze(1), held_out.nonzero().squeeze(1)


def heads_loss(heads: MedusaHeads, hidden: torch.Tensor, future: torch.Tensor, decay: float,
               dtype: torch.dtype) -> tuple[torch.Tensor, list[float]]:
    """Weighted sum of the heads' cross-entropies on one batch; also each head's own loss."""
    device_type = hidden.device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        logits = heads(hidden.float())  # [K, B, V]
    total = hidden.new_zeros((), dtype=torch.float32)
    losses = []
    for head in range(heads.num_heads):
        labels = future[:, head + 1]
        if bool((labels != IGNORE).any()):
            loss = F.cross_entropy(logits[head].float(), labels, ignore_index=IGNORE)
        else:
            loss = logits[head].sum() * 0.0
        losses.append(float(loss.detach()))
        total = total + decay ** head * loss
    return total, losses


@torch.no_grad()
def evaluate(heads: MedusaHeads, features: Features, *, top_k: int = 10, batch_size: int = 512) -> dict[str, Any]:
    """Accuracy of each head: `per_rank[k][r]`, `top1[k]`, `topk[k]` and positions counted.

    Runs in the heads' own precision (float32 for training), as the drafter does.
    """
    device = next(heads.parameters()).device
    hits = torch.zeros(heads.num_heads, top_k, dtype=torch.float64)
    counts = torch.zeros(heads.num_heads, dtype=torch.float64)
    for start in range(0, features.num_positions, batch_size):
        hidden = features.hidden[start:start + batch_size].to(device).float()
        future = features.future[start:start + batch_size].to(device)
        logits = heads(hidden)  # [K, B, V]
        ranked = logits.topk(top_k, dim=-1).indices  # [K, B, top_k]
        for head in range(heads.num_heads):
            labels = future[:, head + 1]
            valid = labels != IGNORE
            counts[head] += float(valid.sum())
            hits[head] += (ranked[head][valid] == labels[valid, None]).sum(0).double().cpu()
    per_rank = (hits / counts.clamp(min=1)[:, None]).tolist()
    return {
        "top_k": top_k,
        "positions": [int(count) for count in counts.tolist()],
        "per_rank": [[round(value, 5) for value in row] for row in per_rank],
        "top1": [round(row[0], 4) for row in per_rank],
        "topk": [round(sum(row), 4) for row in per_rank],
    }


class Trainer(CheckpointedTrainer):
    """Trains heads on features, checkpointing into `folder` (see the module docstring)."""

    module_key = "heads"
    description = "training heads"

    def __init__(self, config: TrainConfig, features: Features, lm_head_weight: torch.Tensor,
                 target_signature: dict, folder: str | Path, device: torch.device | str = "cpu"):
        if config.num_heads > features.max_heads:
            raise InputError(f"the features hold labels for {features.max_heads} heads, not {config.num_heads}")
        device = torch.device(device)
        self.train_index, self.eval_index = split_by_sequence(features, config.eval_fraction, config.seed)
        if len(self.train_index) == 0:
            raise InputError("no training positions left after holding out the evaluation share")
        self.features = features
        heads_config = HeadsConfig(config.num_heads, config.num_layers, int(lm_head_weight.shape[1]),
                                   int(lm_head_weight.shape[0]), config.own_lm_head, target_signature)
        weight = lm_head_weight.detach().to(device, torch.float32)
        self.heads = MedusaHeads(heads_config, weight).to(device)
        self.steps_per_epoch = math.ceil(len(self.train_index) / config.batch_size)
        trainable = [parameter for parameter in self.heads.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        super().__init__(config, self.heads, optimizer, max(1, math.ceil(self.steps_per_epoch * config.epochs)),
                         folder, device)
        self.last_losses: list[float] = []

    def batch_index(self, step: int) -> torch.Tensor:
        """Training positions of one step: a fixed permutation per epoch, so a resume repeats it."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train_index), generator=generator)
        chosen = order[offset * self.config.batch_size:(offset + 1) * self.config.batch_size]
        return self.train_index[chosen]

    def loss(self, step: int) -> torch.Tensor:
        index = self.batch_index(step)
        hidden = self.features.hidden[index].to(self.device)
        future = self.features.future[index].to(self.device)
        loss, self.last_losses = heads_loss(self.heads, hidden, future, self.config.head_decay, self.dtype)
        return loss

    def evaluate(self) -> dict[str, Any]:
        held_out = self.features.subset(self.eval_index if len(self.eval_index) else self.train_index)
        return evaluate(self.heads, held_out, top_k=self.config.top_k)
