"""The n-gram pool: (N-1)-token continuations keyed by the token before them.

As in the reference implementation (`lade/decoding.py`, `update_token_map`), each key keeps at
most `cap` continuations; adding one that is already there moves it to the newest end, adding a
new one to a full key drops its oldest. Candidates come out newest first. Each continuation also
records where it came from (`WINDOW`: a trajectory of the Jacobi window; `TEXT`: the prompt or
the generated text), which the drafter's acceptance estimates use.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

WINDOW, TEXT = 0, 1


class NGramPool:
    """:param cap: continuations kept per key."""

    def __init__(self, cap: int):
        if cap < 1:
            raise ValueError(f"the pool keeps at least one n-gram per key, got cap {cap}")
        self.cap = cap
        self.table: dict[int, OrderedDict[tuple[int, ...], int]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self.table.values())

    def clear(self) -> None:
        self.table.clear()

    def add(self, key: int, continuation: Sequence[int], source: int) -> None:
        entries = self.table.get(key)
        if entries is None:
            entries = self.table[key] = OrderedDict()
        continuation = tuple(continuation)
        if continuation in entries:
            entries.move_to_end(continuation)
        elif len(entries) >= self.cap:
            entries.popitem(last=False)
        entries[continuation] = source

    def add_text(self, tokens: Sequence[int], n: int, start: int = 0) -> None:
        """The n-grams of `tokens` that end at index `start` or later."""
        for end in range(max(start, n - 1), len(tokens)):
            self.add(tokens[end - n + 1], tokens[end - n + 2: end + 1], TEXT)

    def candidates(self, key: int, limit: int) -> list[tuple[tuple[int, ...], int]]:
        """Up to `limit` (continuation, source) pairs for `key`, newest first."""
        entries = self.table.get(key)
        if not entries or limit <= 0:
            return []
        found = []
        for continuation in reversed(entries):
            found.append((continuation, entries[continuation]))
            if len(found) == limit:
                break
        return found
