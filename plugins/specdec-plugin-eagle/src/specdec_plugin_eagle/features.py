"""The target's features over the training text, computed once (the target is frozen).

A `FeatureSet` keeps, for every token of every training sequence, the token, the target's
feature at its position (the chosen layers' hidden states, concatenated, in float16) and whether
the token is learned (inside a span: the assistant's answers). The draft model reads
(feature at i, token at i + 1) and learns the token at i + 2, so the features of prompt
positions are inputs too; only the predicted tokens must be learned ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import torch

from specdec import SavedTensors, TokenSequence, features_cache_key, length_batches, right_padded


@dataclass
class FeatureSet(SavedTensors):
    tokens: torch.Tensor  # [N] int64: all sequences one after another
    features: torch.Tensor  # [N, F] float16: the target's feature at each token
    learned: torch.Tensor  # [N] bool: the token lies in a learned span
    offsets: torch.Tensor  # [S + 1] int64: sequence s owns rows offsets[s]:offsets[s + 1]

    @property
    def num_sequences(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low, high = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.tokens[low:high], self.features[low:high], self.learned[low:high]

    def length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])


def features_key(signature: dict, sequences: Sequence[TokenSequence], layers: Sequence[int]) -> str:
    """Identifies the inputs of `compute_features`: the target, the text and the layers."""
    return features_cache_key(signature, sequences, json.dumps(list(layers)))


@torch.inference_mode()
def compute_features(model, sequences: Sequence[TokenSequence], layers: Sequence[int], *,
                     batch_tokens: int = 4096, progress: bool = True) -> FeatureSet:
    """Run the target once over every sequence (right-padded batches of similar lengths)."""
    from tqdm import tqdm

    device = model.device
    batches = length_batches(sequences, batch_tokens)
    parts: dict[int, torch.Tensor] = {}
    with tqdm(total=sum(len(s.token_ids) for s in sequences), desc="target features", unit="tok",
              disable=not progress) as bar:
        for batch in batches:
            ids, mask = right_padded(sequences, batch)
            output = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                           logits_to_keep=1, use_cache=False)
            chosen = torch.cat([output.hidden_states[layer] for layer in layers], dim=-1)  # [B, S, F]
            for row, index in enumerate(batch):
                parts[index] = chosen[row, : len(sequences[index].token_ids)].to("cpu", torch.float16)
            bar.update(int(mask.sum()))
    tokens, features, learned, offsets = [], [], [], [0]
    for index, sequence in enumerate(sequences):
        flags = torch.zeros(len(sequence.token_ids), dtype=torch.bool)
        for start, end in sequence.spans:
            flags[start:end] = True
        tokens.append(torch.tensor(sequence.token_ids, dtype=torch.long))
        features.append(parts[index])
        learned.append(flags)
        offsets.append(offsets[-1] + len(sequence.token_ids))
    return FeatureSet(torch.cat(tokens), torch.cat(features), torch.cat(learned), torch.tensor(offsets))


def token_frequencies(sets: Sequence[TokenSequence], vocab_size: int) -> torch.Tensor:
    """How often each token occurs inside the learned spans: `[V]` int64."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for sequence in sets:
        for start, end in sequence.spans:
            ids = torch.tensor(sequence.token_ids[start:end], dtype=torch.long)
            counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts


def frequent_tokens(counts: torch.Tensor, size: int, always: Sequence[int] = ()) -> torch.Tensor:
    """The draft vocabulary of FR-Spec: the `always` ids (end-of-sequence tokens: a draft that
    cannot say "stop" runs past every answer's end), then the most frequent tokens (ties and
    unseen tokens in id order), `size` ids in all."""
    vocab = counts.shape[0]
    size = min(size, vocab)
    order = sorted(range(vocab), key=lambda token: (-int(counts[token]), token))
    chosen = [token for token in always if 0 <= token < vocab][:size]
    seen = set(chosen)
    for token in order:
        if len(chosen) >= size:
            break
        if token not in seen:
            chosen.append(token)
            seen.add(token)
    return torch.tensor(chosen, dtype=torch.long)
