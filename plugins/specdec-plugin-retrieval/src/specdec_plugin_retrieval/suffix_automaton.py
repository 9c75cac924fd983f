"""An online suffix automaton of a growing token sequence: the longest earlier match of its
suffix in amortized O(1) per appended token (the matcher of SAM-Decoding, Hu et al. 2024).

The automaton of a sequence has one state per class of substrings that end at the same set of
positions (their *endpos*); `link` points to the class of the longest suffix with a larger
endpos set, `length` is the longest string of a class, and `first_end` the position of the
last token of its first occurrence (the smallest endpos; a clone inherits it, since the end
position its creation adds is the newest). Appending a token adds one state and at most one
clone, with amortized O(1) transition updates (Blumer et al. 1985).

Besides the automaton, the matcher keeps a *match*: the longest suffix of the sequence that
also ends earlier, as (state, length). Before a token is appended to the automaton, the match is
advanced by that token in the automaton of the tokens before it, following suffix links on a
mismatch like Aho-Corasick; so the matched string always has an occurrence that ends before the
last token, and a continuation after it. Each advance adds at most one to the length and every
suffix-link step removes at least one, so matching is amortized O(1) too.

Unlike the n-gram index (`ngram_index.NgramIndex`), the match has no longest n: it is the whole
repeated suffix, however long. Its occurrence is the *first* one (the state's `first_end`);
shorter matches (the states up the suffix links) give further candidates, each at its own first
occurrence. The most recent occurrence is not available at O(1) per token: keeping each state's
last end position up to date touches every state on the new token's suffix-link path.
"""

from __future__ import annotations

from typing import Sequence

from specdec_plugin_retrieval.ngram_index import GrowingIndex, continuation, matched_length


class SuffixAutomaton(GrowingIndex):
    """Longest earlier match of the trailing tokens, kept in step with a sequence that only grows.

    The interface is the n-gram index's, so `PromptLookupDrafter` can use either.

    :param min_n: shortest match worth reporting (shorter ones return no occurrence).
    """

    def __init__(self, min_n: int = 1):
        if min_n < 1:
            raise ValueError(f"min_n must be >= 1, got {min_n}")
        self.min_n = min_n
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        # state 0 is the root (the empty string)
        self._next: list[dict[int, int]] = [{}]
        self._link: list[int] = [-1]
        self._length: list[int] = [0]
        self._first_end: list[int] = [-1]
        self._last = 0  # the state of the whole sequence
        self._match_state, self._match_length = 0, 0

    @property
    def num_states(self) -> int:
        return len(self._length)

    @property
    def match_length(self) -> int:
        """Length of the longest suffix of the sequence that also ends earlier in it."""
        return self._match_length

    def extend(self, new_tokens: Sequence[int]) -> None:
        for token in new_tokens:
            token = int(token)
            self._advance_match(token)
            self._append(token)
            self.tokens.append(token)

    def _advance_match(self, token: int) -> None:
        """The match of the sequence plus `token`, in the automaton of the sequence alone."""
        state, length = self._match_state, self._match_length
        nexts, links, lengths = self._next, self._link, self._length
        while state and token not in nexts[state]:
            state = links[state]
            length = lengths[state]
        if token in nexts[state]:
            self._match_state, self._match_length = nexts[state][token], length + 1
        else:
            self._match_state, self._match_length = 0, 0

    def _append(self, token: int) -> None:
        """Blumer et al.'s online construction step, plus `first_end`."""
        nexts, links, lengths, first_end = self._next, self._link, self._length, self._first_end
        position = len(self.tokens)
        current = len(lengths)
        nexts.append({})
        links.append(0)
        lengths.append(lengths[self._last] + 1)
        first_end.append(position)
        state = self._last
        while state != -1 and token not in nexts[state]:
            nexts[state][token] = current
            state = links[state]
        if state != -1:
            target = nexts[state][token]
            if lengths[state] + 1 == lengths[target]:
                links[current] = target
            else:
                clone = len(lengths)
                nexts.append(dict(nexts[target]))
                links.append(links[target])
                lengths.append(lengths[state] + 1)
                first_end.append(first_end[target])
                while state != -1 and nexts[state].get(token) == target:
                    nexts[state][token] = clone
                    state = links[state]
                links[target] = links[current] = clone
                # the match may have been the short part of the split class, now the clone's
                if self._match_state == target and self._match_length <= lengths[clone]:
                    self._match_state = clone
        self._last = current

    def occurrences(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` earlier occurrences of suffixes of the sequence, longest match first, as
        (match length, position right after the occurrence): the first occurrence of the
        longest match, then the first occurrences of the shorter suffix classes up the suffix
        links (distinct positions only), down to `min_n` tokens."""
        found: list[tuple[int, int]] = []
        seen: set[int] = set()
        state, length = self._match_state, self._match_length
        while state > 0 and length >= self.min_n and len(found) < limit:
            position = self._first_end[state] + 1
            if position not in seen:
                seen.add(position)
                found.append((length, position))
            state = self._link[state]
            length = self._length[state]
        return found

    def longest_match(self, limit: int) -> tuple[int, list[int]]:
        """The longest match length and the positions right after up to `limit` occurrences (see
        `occurrences`); (0, []) when no suffix of at least `min_n` tokens occurred before."""
        found = self.occurrences(limit)
        if not found:
            return 0, []
        return found[0][0], [position for _, position in found]

    def matched_length(self, position: int, limit: int) -> int:
        """How many tokens before `position` equal the last tokens of the sequence (at most `limit`)."""
        return matched_length(self.tokens, position, limit)

    def continuation(self, position: int, length: int) -> list[int]:
        """`length` tokens from `position` on, a loop repeating past the end (see `ngram_index`)."""
        return continuation(self.tokens, position, length)
