"""`DraftBatch`: the drafts of every sequence of a step, packed for one verification forward.

The scheduler verifies B sequences in one target forward. Each sequence brings the committed
tokens its cache has not seen (`pending`, whose last token is the draft's root) and its `Draft`.
The packed form follows vLLM V1's `SpecDecodeMetadata`: flat node tokens with per-sequence
offsets, so a verifier or policy can work on the whole batch with tensor operations, while
`drafts[b]` keeps each sequence's own `Draft` for code that walks one tree at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch

from specdec.draft import Draft


@dataclass(frozen=True, eq=False)
class DraftBatch:
    """B sequences' pending tokens and drafts. Batch of one is the common case.

    Sequence b owns nodes `cu_num_nodes[b]:cu_num_nodes[b + 1]` of the flat fields; node indices
    in `parents` are local to the sequence (-1 = its root), as in `Draft`.
    """

    drafts: tuple[Draft, ...]  # [B]
    pending: tuple[tuple[int, ...], ...]  # [B] committed tokens not yet in the cache; the last is the root
    slots: tuple[int, ...]  # [B] cache slot of each sequence
    hidden_state_layers: tuple[int, ...] = ()  # hidden states the verifier returns (union over drafters)

    def __post_init__(self) -> None:
        if not (len(self.drafts) == len(self.pending) == len(self.slots)):
            raise ValueError(f"a DraftBatch needs one pending list and one slot per draft, got "
                             f"{len(self.drafts)} drafts, {len(self.pending)} pending, {len(self.slots)} slots")
        if any(not tokens for tokens in self.pending):
            raise ValueError("every sequence of a DraftBatch needs at least one pending token (its root)")

    @classmethod
    def from_drafts(cls, drafts: Sequence[Draft], pending: Sequence[Sequence[int]] | None = None,
                    slots: Sequence[int] | None = None,
                    hidden_state_layers: Sequence[int] = ()) -> "DraftBatch":
        """Pack drafts; by default each sequence has one pending token (0) and slot b (for tests)."""
        pending = [(0,)] * len(drafts) if pending is None else pending
        slots = range(len(drafts)) if slots is None else slots
        return cls(tuple(drafts), tuple(tuple(int(token) for token in tokens) for tokens in pending),
                   tuple(slots), tuple(hidden_state_layers))

    def __len__(self) -> int:
        return len(self.drafts)

    @cached_property
    def cu_num_nodes(self) -> torch.Tensor:
        """`[B + 1]` int64: cumulative draft node counts (sequence b owns `[cu[b], cu[b + 1])`)."""
        counts = torch.tensor([0] + [draft.num_nodes for draft in self.drafts], dtype=torch.long)
        return counts.cumsum(0)

    @cached_property
    def tokens(self) -> torch.Tensor:
        """`[sum T]` int64: every sequence's draft node tokens, flat."""
        return torch.cat([draft.tokens.cpu() for draft in self.drafts]) if self.drafts \
            else torch.empty(0, dtype=torch.long)

    @cached_property
    def parents(self) -> torch.Tensor:
        """`[sum T]` int64: each node's parent within its own sequence (-1 = the root)."""
        return torch.tensor([parent for draft in self.drafts for parent in draft.parents], dtype=torch.long)

    @cached_property
    def q(self) -> torch.Tensor | None:
        """`[sum T, V]` float32 draft distributions, when every non-empty draft carries q, else None."""
        rows = [draft.q for draft in self.drafts if draft.num_nodes]
        if not rows or any(row is None for row in rows):
            return None
        return torch.cat([row.float() for row in rows])

    @property
    def num_pending(self) -> tuple[int, ...]:
        return tuple(len(tokens) for tokens in self.pending)
