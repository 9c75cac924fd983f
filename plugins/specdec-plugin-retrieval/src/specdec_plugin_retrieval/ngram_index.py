"""An incremental n-gram index of a growing token sequence, for prompt lookup.

For every n in [min_n, max_n] it maps each n-gram to the positions right after its occurrences,
in increasing order. Appending t tokens costs O(t * (max_n - min_n + 1)) dictionary updates, and a
lookup costs a few dictionary reads plus the occurrences it returns (at most `limit`): neither
depends on how long the sequence already is.
"""

from __future__ import annotations

from typing import Sequence


class GrowingIndex:
    """An index of `tokens` that a drafter keeps in step with its sequence: `extend` appends, and
    `sync` catches up with a sequence that grew or, after a rollback, starts over."""

    tokens: list[int]

    def reset(self) -> None:
        raise NotImplementedError

    def extend(self, new_tokens: Sequence[int]) -> None:
        raise NotImplementedError

    def sync(self, sequence: Sequence[int]) -> None:
        """Catch up with `sequence`, which extends the indexed tokens (else re-index it)."""
        indexed = len(self.tokens)
        if len(sequence) < indexed or (indexed and sequence[indexed - 1] != self.tokens[-1]):
            self.reset()
            indexed = 0
        if len(sequence) > indexed:
            self.extend(sequence[indexed:])


class NgramIndex(GrowingIndex):
    """Where each n-gram of `tokens` occurred, kept in step with a sequence that only grows."""

    def __init__(self, min_n: int, max_n: int):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n} and {max_n}")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        # _after[n - min_n][ngram] = positions p (ascending) with tokens[p - n:p] == ngram
        self._after: list[dict[tuple[int, ...], list[int]]] = [{} for _ in range(min_n, max_n + 1)]

    def reset(self) -> None:
        self.tokens = []
        for table in self._after:
            table.clear()

    def extend(self, new_tokens: Sequence[int]) -> None:
        tokens, min_n = self.tokens, self.min_n
        for token in new_tokens:
            tokens.append(int(token))
            end = len(tokens)
            for offset, table in enumerate(self._after):
                n = min_n + offset
                if n > end:
                    break
                key = tuple(tokens[end - n:end])
                positions = table.get(key)
                if positions is None:
                    table[key] = [end]
                else:
                    positions.append(end)

    def occurrences(self, n: int, limit: int) -> list[int]:
        """Up to `limit` most recent earlier occurrences of the last n tokens, most recent first,
        as the positions right after them (the trailing n-gram itself is excluded)."""
        tokens = self.tokens
        if not self.min_n <= n <= self.max_n or n >= len(tokens) + 1:
            return []
        positions = self._after[n - self.min_n].get(tuple(tokens[len(tokens) - n:]))
        if not positions:
            return []
        # the last entry is the trailing n-gram itself
        return positions[-2:-limit - 2:-1] if limit > 0 else []

    def longest_match(self, limit: int) -> tuple[int, list[int]]:
        """The longest n (max_n down to min_n) whose trailing n-gram occurred before, with its
        occurrences (see `occurrences`); (0, []) when none did."""
        for n in range(min(self.max_n, len(self.tokens)), self.min_n - 1, -1):
            found = self.occurrences(n, limit)
            if found:
                return n, found
        return 0, []

    def matched_length(self, position: int, limit: int) -> int:
        """How many tokens before `position` equal the last tokens of the sequence (at most
        `limit`): the whole context an occurrence matched, not only the n-gram looked up."""
        return matched_length(self.tokens, position, limit)

    def continuation(self, position: int, length: int) -> list[int]:
        """`length` tokens from `position` on; past the end, the continuation repeats itself, as a
        sequence that keeps copying from `position` would (a loop keeps looping)."""
        return continuation(self.tokens, position, length)


def matched_length(tokens: Sequence[int], position: int, limit: int) -> int:
    """How many tokens of `tokens` before `position` equal its last tokens (at most `limit`)."""
    end = len(tokens)
    length = 0
    while length < limit and length < position and tokens[position - 1 - length] == tokens[end - 1 - length]:
        length += 1
    return length


def continuation(tokens: Sequence[int], position: int, length: int) -> list[int]:
    """`length` tokens of `tokens` from `position` on, repeating `tokens[position:]` past the end."""
    end = len(tokens)
    if position + length <= end:
        return list(tokens[position:position + length])
    out = list(tokens[position:end])
    while len(out) < length:
        out.append(out[len(out) - (end - position)])
    return out
