"""Precompute the target's final hidden states once, so heads train without running the target.

Medusa-1 freezes the target, so its hidden states never change during training: one forward
pass over the training text gives everything the heads need. A training position is a position
p whose next token is learned; for it we keep the final normed hidden state (the one the LM head
reads, and the one the drafter gets from the verifier at inference) in float16, and the tokens
that follow it within the learned span (`future[:, j]` = token p + 1 + j, -100 past the span).
Head k learns `future[:, k + 1]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from specdec import SavedTensors, TokenSequence, features_cache_key, length_batches, right_padded

IGNORE = -100


@dataclass
class Features(SavedTensors):
    hidden: torch.Tensor  # [N, H] float16: final normed hidden state at each training position
    future: torch.Tensor  # [N, F] int64: token p + 1 + j, or IGNORE outside the learned span
    sequence: torch.Tensor  # [N] int64: which sequence each position comes from

    @property
    def num_positions(self) -> int:
        return self.hidden.shape[0]

    @property
    def max_heads(self) -> int:
        return self.future.shape[1] - 1

    def subset(self, index: torch.Tensor) -> "Features":
        return Features(self.hidden[index], self.future[index], self.sequence[index])


def features_key(signature: dict, sequences: Sequence[TokenSequence], max_future: int) -> str:
    """Identifies the inputs of `compute_features`: the target, the text and the label width."""
    return features_cache_key(signature, sequences, str(max_future))


def training_positions(sequence: TokenSequence, max_future: int) -> tuple[list[int], list[list[int]]]:
    """Positions whose next token is learned, and the learned tokens after each (see module doc)."""
    ids = sequence.token_ids
    positions, futures = [], []
    for start, end in sequence.spans:
        for position in range(max(start - 1, 0), end - 1):
            future = [ids[index] if index < end else IGNORE
                      for index in range(position + 1, position + 1 + max_future)]
            positions.append(position)
            futures.append(future)
    return positions, futures


@torch.inference_mode()
def compute_features(model, sequences: Sequence[TokenSequence], *, max_future: int = 9,
                     batch_tokens: int = 4096, progress: bool = True) -> Features:
    """Run the target once over every sequence (right-padded batches of similar lengths) and
    keep the hidden state at every training position."""
    from tqdm import tqdm

    device = model.device
    batches = length_batches(sequences, batch_tokens)
    parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # sequence index -> (hidden, future)
    total = sum(len(sequence.token_ids) for sequence in sequences)
    with tqdm(total=total, desc="target hidden states", unit="tok", disable=not progress) as bar:
        for batch in batches:
            ids, mask = right_padded(sequences, batch)
            output = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                           logits_to_keep=1, use_cache=False)
            final = output.hidden_states[-1]  # [B, S, H]: what the LM head reads
            for row, index in enumerate(batch):
                positions, futures = training_positions(sequences[index], max_future)
                if not positions:
                    continue
                parts[index] = (final[row, positions].to("cpu", torch.float16), torch.tensor(futures, dtype=torch.long))
            bar.update(int(mask.sum()))
    if not parts:
        raise ValueError("the training text has no position with a learned next token")
    indices = sorted(parts)  # back to the order of `sequences`
    hidden = torch.cat([parts[index][0] for index in indices])
    future = torch.cat([parts[index][1] for index in indices])
    owner = torch.cat([torch.full((len(parts[index][1]),), index, dtype=torch.long) for index in indices])
    return Features(hidden, future, owner)
