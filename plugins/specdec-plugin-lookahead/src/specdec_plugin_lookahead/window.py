"""The lookahead window: N-1 levels of Jacobi guesses, laid out as aux rows of the verification.

Columns are counted from the root (the last committed token, offset 0). Level 0 holds the
guesses at offsets 1..C-1 (its column 0 is the root itself); level l >= 1 holds C guesses, column
i at offset l + i. A guess at (level l, column i) attends to level 0's columns 1..i and to column
i of levels 1..l, so its context is the chain root, level 0 up to column i, then one token per
level, at consecutive positions: the target's output there is one Jacobi iterate of the token at
offset l + i + 1. (The layout, positions and mask of `jforward_multilevel` in the reference
implementation, hao-ai-lab/LookaheadDecoding.)

After each verification the outputs (argmax) of the last level are the newest level. While the
levels fill (warm-up, the first N-2 steps) each step adds a level; then each step turns every
column into one N-gram for the pool (column i's level-0 token, its tokens on levels 1..N-2, the
new output) and shifts: level 0 becomes level 1 minus its first column, level l becomes level
l + 1, the outputs become the last level. The window always moves by one position, however many
tokens the step committed (the reference's ALWAYS_FWD_ONE): after a longer step its guesses sit
some positions off, which only makes them worse guesses.
"""

from __future__ import annotations

from typing import Sequence

import torch

from specdec_plugin_lookahead.pool import WINDOW, NGramPool


def window_rows(width: int, ngram: int) -> int:
    """Aux rows of a filled window of `width` columns for n-grams of `ngram` tokens."""
    return (width - 1) + (ngram - 2) * width


class JacobiWindow:
    """The window's state (see the module docstring).

    :param width: W, columns once filled.
    :param ngram: N, so N-1 levels.
    """

    def __init__(self, width: int, ngram: int):
        if width < 1 or ngram < 3:
            raise ValueError(f"a lookahead window needs width >= 1 and ngram >= 3, got {width} and {ngram}")
        self.width, self.ngram = width, ngram
        self.levels: list[list[int]] = []
        self._layouts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def initial_length(self) -> int:
        """Level-0 guesses at the start: W - 1 plus one per warm-up step, which each drop one."""
        return self.width + self.ngram - 3

    def reset(self, guesses: Sequence[int]) -> None:
        """Start over with level 0 = `guesses` (`initial_length` tokens)."""
        if len(guesses) != self.initial_length:
            raise ValueError(f"level 0 starts with {self.initial_length} guesses, got {len(guesses)}")
        self.levels = [list(guesses)]

    @property
    def started(self) -> bool:
        return bool(self.levels)

    @property
    def filled(self) -> bool:
        return len(self.levels) == self.ngram - 1

    @property
    def columns(self) -> int:
        return len(self.levels[0]) + 1

    @property
    def num_rows(self) -> int:
        return len(self.levels[0]) + (len(self.levels) - 1) * self.columns

    def tokens(self) -> list[int]:
        """The aux row tokens: level 0, then each further level."""
        return [token for level in self.levels for token in level]

    def layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(position_offsets [A], attends_to [A, A])` of the aux rows (cached per shape)."""
        key = (self.columns, len(self.levels))
        if key not in self._layouts:
            self._layouts[key] = _layout(*key)
        return self._layouts[key]

    def advance(self, root: int, outputs: Sequence[int], pool: NGramPool | None) -> None:
        """Take the target's argmax at every aux row (`outputs`, in `tokens()` order) from the step
        whose root was `root`: add a level (warm-up) or, once filled, put one N-gram per column into
        `pool` and shift."""
        levels, columns = self.levels, self.columns
        if len(outputs) != self.num_rows:
            raise ValueError(f"the window has {self.num_rows} aux rows, got {len(outputs)} outputs")
        if len(levels) == 1:
            last = list(outputs)  # level 0's outputs, columns 1..C-1: the next level's columns 0..C-2
        else:
            last = list(outputs[-columns:])
        if not self.filled:
            newest = last if len(levels) == 1 else last[1:]
            self.levels = [level[1:] for level in levels] + [newest]
            return
        if pool is not None:
            for column in range(columns):
                key = root if column == 0 else levels[0][column - 1]
                pool.add(key, [level[column] for level in levels[1:]] + [last[column]], WINDOW)
        self.levels = [levels[1][1:]] + [list(level) for level in levels[2:]] + [last]


def _layout(columns: int, num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    first = columns - 1  # level-0 rows: columns 1..C-1 at indices 0..C-2
    count = first + (num_levels - 1) * columns
    offsets = torch.empty(count, dtype=torch.long)
    mask = torch.zeros(count, count, dtype=torch.bool)
    for column in range(1, columns):
        offsets[column - 1] = column
        mask[column - 1, :column] = True  # level 0, columns 1..column
    for level in range(1, num_levels):
        for column in range(columns):
            row = first + (level - 1) * columns + column
            offsets[row] = level + column
            mask[row, :column] = True  # level 0, columns 1..column
            for below in range(1, level + 1):
                mask[row, first + (below - 1) * columns + column] = True  # this column on levels 1..level
    return offsets, mask
