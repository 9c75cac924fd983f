"""The adjacency table of Token Recycling: each token id's top-k next tokens by the target.

Every verification forward computes the target's distribution after the root and after every
draft node, accepted or not. Plain decoding keeps one token of each and throws the rest away;
Token Recycling keeps, for the token at each of those positions, its k most likely successors
(the "row" of that token). A later step that meets the token again drafts from its row.

A row is the target's prediction in the context where it was computed; meeting the token again
in another context makes it a guess. Rows are overwritten, newest wins, as in the reference
implementation (its `adj_matrix[tokens] = topk(logits)`). Alongside the ids the table keeps each
candidate's *share*: its probability renormalized over the row's k candidates (the softmax of
the k largest logits), a measure of how sure the target was, which the drafter uses to estimate
how likely each candidate is to be accepted. The share needs only the k largest logits; the true
probability would need a normalizer over the whole vocabulary, a multi-threaded reduction per
row that costs milliseconds when the CPU is shared with other work, for a feature the
drafter's learned acceptance buckets anyway.

Storage is two dense numpy arrays, `[V, k]` ids (int32) and shares (float32), about 3 MB for a
49k vocabulary at k = 8, grown to the largest token id written. Numpy rather than torch: the
drafter reads single rows from Python every step, and a numpy row costs a fraction of a
microsecond where a torch row costs several.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def top_candidates(logits: torch.Tensor, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `top_k` most likely tokens, best first, and their shares (probabilities
    renormalized over those `top_k`).

    :param logits: `[R, V]`.
    :returns: `([R, top_k] int32 ids, [R, top_k] float32 shares)`; when V < top_k the missing
        candidates have id -1 and share 0.
    """
    k = min(top_k, logits.shape[-1])
    if logits.device.type == "cpu":
        # numpy, single-threaded: torch's top-k over a few rows is a parallel region, which waits
        # milliseconds for a core when the CPU is shared with other work
        rows = logits.detach().float().numpy()  # [R, V]
        ids = np.argpartition(rows, -k, axis=1)[:, -k:]  # [R, k], unordered
        values = np.take_along_axis(rows, ids, axis=1)
        best_first = np.argsort(-values, axis=1, kind="stable")
        ids, values = np.take_along_axis(ids, best_first, axis=1), np.take_along_axis(values, best_first, axis=1)
    else:
        values, ids = logits.topk(k, dim=-1)  # [R, k], best first
        values, ids = values.float().cpu().numpy(), ids.cpu().numpy()
    shares = np.exp(values - values[:, :1])
    shares /= shares.sum(axis=1, keepdims=True)
    ids = ids.astype(np.int32)
    if k < top_k:
        ids = np.concatenate([ids, np.full((ids.shape[0], top_k - k), -1, dtype=np.int32)], axis=1)
        shares = np.concatenate([shares, np.zeros((shares.shape[0], top_k - k), dtype=np.float32)], axis=1)
    return ids, shares.astype(np.float32)


class AdjacencyTable:
    """Each token's top-k successors and their shares, as the target last predicted them.

    :param top_k: candidates kept per token (the paper keeps 8).
    """

    def __init__(self, top_k: int = 8):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.clear()

    def clear(self) -> None:
        """Forget every row (a cold start)."""
        self.ids = np.full((0, self.top_k), -1, dtype=np.int32)  # [V, k]
        self.shares = np.zeros((0, self.top_k), dtype=np.float32)  # [V, k]
        self.filled = np.zeros(0, dtype=bool)  # [V]

    @property
    def num_rows(self) -> int:
        """Tokens that have a row."""
        return int(self.filled.sum())

    def row(self, token: int) -> tuple[list[int], list[float]] | None:
        """The candidates of `token`, best first, as (ids, shares); None if it has no row."""
        if not 0 <= token < self.filled.shape[0] or not self.filled[token]:
            return None
        return self.ids[token].tolist(), self.shares[token].tolist()

    def write(self, tokens: Sequence[int], ids: np.ndarray, shares: np.ndarray) -> None:
        """Set the rows of `tokens` (`[R, k]` ids and shares, one row per token); when a token
        appears several times, its last row wins."""
        last = {int(token): index for index, token in enumerate(tokens)}  # dict keeps the last index
        if not last:
            return
        rows = np.fromiter(last, dtype=np.int64, count=len(last))
        picks = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        self._grow(int(rows.max()) + 1)
        self.ids[rows] = ids[picks]
        self.shares[rows] = shares[picks]
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
        self.ids = np.concatenate([self.ids, np.full((extra, self.top_k), -1, dtype=np.int32)])
        self.shares = np.concatenate([self.shares, np.zeros((extra, self.top_k), dtype=np.float32)])
        self.filled = np.concatenate([self.filled, np.zeros(extra, dtype=bool)])
