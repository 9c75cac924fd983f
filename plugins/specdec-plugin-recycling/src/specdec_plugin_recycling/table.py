"""The adjacency table of Token Recycling: each token id's top-k next tokens by the target.

Every verification forward computes the target's distribution after the root and after every
draft node, accepted or not. Plain decoding keeps one token of each and throws the rest away;
Token Recycling keeps, for the token at each of those positions, its k most likely successors
(the "row" of that token). A later step that meets the token again drafts from its row.

A row is the target's prediction in the context where it was computed; meeting the token again
in another context makes it a guess. Rows are overwritten, newest wins, as in the reference
implementation (its `adj_matrix[tokens] = topk(logits)`). Alongside the ids the table keeps the
target's probabilities of them (softmax at temperature 1), which the drafter uses to estimate
how likely each candidate is to be accepted.

Storage is two dense arrays, `[V, k]` ids (int32) and probabilities (float32), about 3 MB for a
49k vocabulary at k = 8, grown to the largest token id written.
"""

from __future__ import annotations

from typing import Sequence

import torch


def top_candidates(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's `top_k` most likely tokens and their probabilities (softmax at temperature 1).

    :param logits: `[R, V]`.
    :returns: `([R, top_k] int32 ids, [R, top_k] float32 probabilities)`; when V < top_k the
        missing candidates have id -1 and probability 0.
    """
    logits = logits.float()
    k = min(top_k, logits.shape[-1])
    values, ids = logits.topk(k, dim=-1)  # [R, k], best first
    probs = torch.exp(values - torch.logsumexp(logits, dim=-1, keepdim=True))
    if k < top_k:
        ids = torch.cat([ids, ids.new_full((ids.shape[0], top_k - k), -1)], dim=-1)
        probs = torch.cat([probs, probs.new_zeros((probs.shape[0], top_k - k))], dim=-1)
    return ids.to(torch.int32), probs


class AdjacencyTable:
    """Each token's top-k successors and their probabilities, as the target last predicted them.

    :param top_k: candidates kept per token (the paper keeps 8).
    """

    def __init__(self, top_k: int = 8):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.clear()

    def clear(self) -> None:
        """Forget every row (a cold start)."""
        self.ids = torch.empty((0, self.top_k), dtype=torch.int32)  # [V, k]
        self.probs = torch.empty((0, self.top_k), dtype=torch.float32)  # [V, k]
        self.filled = torch.zeros(0, dtype=torch.bool)  # [V]

    @property
    def num_rows(self) -> int:
        """Tokens that have a row."""
        return int(self.filled.sum())

    def row(self, token: int) -> tuple[list[int], list[float]] | None:
        """The candidates of `token`, best first, as (ids, probabilities); None if it has no row."""
        if not 0 <= token < self.filled.shape[0] or not self.filled[token]:
            return None
        return self.ids[token].tolist(), self.probs[token].tolist()

    def write(self, tokens: Sequence[int], ids: torch.Tensor, probs: torch.Tensor) -> None:
        """Set the rows of `tokens` (`[R, k]` ids and probabilities, one row per token); when a
        token appears several times, its last row wins."""
        last = {int(token): index for index, token in enumerate(tokens)}  # dict keeps the last index
        if not last:
            return
        rows = torch.tensor(list(last), dtype=torch.long)
        picks = torch.tensor(list(last.values()), dtype=torch.long)
        self._grow(max(last) + 1)
        self.ids[rows] = ids[picks].to(torch.int32)
        self.probs[rows] = probs[picks].float()
        self.filled[rows] = True

    def update(self, tokens: Sequence[int], logits: torch.Tensor) -> None:
        """Set the rows of `tokens` from the target's logits at their positions (`[R, V]`)."""
        self.write(tokens, *top_candidates(logits, self.top_k))

    def _grow(self, size: int) -> None:
        """Room for token ids below `size`, at least doubling (few copies as ids rise)."""
        old = self.filled.shape[0]
        if size <= old:
            return
        extra = max(size, 2 * old) - old
        self.ids = torch.cat([self.ids, self.ids.new_full((extra, self.top_k), -1)])
        self.probs = torch.cat([self.probs, self.probs.new_zeros((extra, self.top_k))])
        self.filled = torch.cat([self.filled, self.filled.new_zeros(extra)])
