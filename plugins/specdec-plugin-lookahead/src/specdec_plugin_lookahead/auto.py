"""`auto`: sizing the window and the guesses from the verification cost curve of this machine.

A window of W columns and N-1 levels adds `A = (W - 1) + (N - 2) W` rows to every verification
forward, which then costs `c(A)` plain steps instead of 1 (`specdec.CostModel`; `node_cost: auto`
measures the curve). The window pays when the extra tokens per step it brings exceed `c(A) - 1`.

- Before anything is measured (`choose_window`): the largest window whose overhead
  `c(A) - 1` is at most the assumed gain `window_gain`, W from 1 to 32 and N from 3 to 5 unless
  given; ties go to the wider window. If none fits, the smallest (W = 1, N = 3: one row).
- While decoding (`WindowGain`): what the window brings is measured, step by step, as the
  longest match between the committed text and the pool's candidates for the step's root, minus
  the same with only the candidates that did not come from the window. Its decayed mean is the
  window's gain; when it falls below the window's overhead the window pauses (no aux rows), and
  it is tried again for a few steps now and then.
- Guesses (`guesses: auto`): each candidate node gets a learned chance of acceptance, and
  `specdec.select_nodes` keeps the nodes whose expected tokens per unit of cost are best, the
  cost of m nodes on top of the window being `c(A + m) / c(A)` (`OnTopOf`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from specdec import CostModel

from specdec_plugin_lookahead.window import window_rows

#: Window sizes `choose_window` considers.
AUTO_WIDTHS = range(1, 33)
AUTO_NGRAMS = (3, 4, 5)


def choose_window(cost: CostModel, window: int | str, ngram: int | str, window_gain: float) -> tuple[int, int]:
    """(W, N) for the given params, `auto` ones chosen from `cost` (see the module docstring)."""
    widths = AUTO_WIDTHS if window == "auto" else (int(window),)
    ngrams = AUTO_NGRAMS if ngram == "auto" else (int(ngram),)
    sized = window == "auto" or ngram == "auto"
    best: tuple[int, int, int] | None = None  # (rows, W, N)
    for n in ngrams:
        for w in widths:
            rows = window_rows(w, n)
            if sized and cost.step_cost(rows) - 1.0 > window_gain:
                continue
            if best is None or (rows, w) > best[:2]:
                best = (rows, w, n)
    if best is None:  # nothing fits: the smallest window; measuring its gain decides whether it runs
        return widths[0], ngrams[0]
    return best[1], best[2]


@dataclass(frozen=True)
class OnTopOf:
    """The cost of m draft nodes verified together with `base` aux rows, relative to the aux rows
    alone (duck-types `CostModel.step_cost` for `select_nodes`)."""

    cost: CostModel
    base: int

    def step_cost(self, num_nodes: int) -> float:
        return self.cost.step_cost(self.base + num_nodes) / self.cost.step_cost(self.base)


def longest_match(candidates: Sequence[Sequence[int]], actual: Sequence[int]) -> int:
    """The longest common prefix of `actual` with any of `candidates`."""
    best = 0
    for candidate in candidates:
        length = 0
        for guess, token in zip(candidate, actual):
            if guess != token:
                break
            length += 1
        best = max(best, length)
    return best


@dataclass
class WindowGain:
    """Measures what the window brings and decides when it runs (see the module docstring).

    :param overhead: the window's verification overhead, `c(A) - 1` plain steps.
    :param depth: candidate length (N - 1): a step's candidates are scored once that many tokens
        after its root are committed.
    """

    overhead: float
    depth: int
    decay: float = 0.9
    warmup: int = 16  # scored steps before the window may pause
    probe_every: int = 64  # steps paused before trying the window again
    probe_steps: int = 16  # steps a probe runs (the window refills its levels first)
    gain: float = 0.0
    weight: float = 0.0
    scored: int = 0
    paused_for: int = 0  # steps since the window paused (0 = running)
    probing: int = 0  # steps left of the current probe
    pending: list = field(default_factory=list)  # (start, all candidates, non-window candidates)

    def reset(self) -> None:
        self.pending = []

    def add(self, start: int, everything: Sequence[Sequence[int]], without: Sequence[Sequence[int]]) -> None:
        """The candidates for the root at index `start - 1` of the sequence, all and non-window ones."""
        if everything:
            self.pending.append((start, everything, without))

    def update(self, tokens: Sequence[int]) -> None:
        """Score the candidates whose continuation is committed now (`tokens`: the whole sequence)."""
        keep = []
        for start, everything, without in self.pending:
            if len(tokens) < start + self.depth:
                keep.append((start, everything, without))
                continue
            actual = tokens[start: start + self.depth]
            gain = longest_match(everything, actual) - longest_match(without, actual)
            self.gain = self.gain * self.decay + gain
            self.weight = self.weight * self.decay + 1.0
            self.scored += 1
        self.pending = keep

    @property
    def mean(self) -> float:
        return self.gain / self.weight if self.weight else 0.0

    def runs(self) -> bool:
        """Whether the window runs this step (call once per step)."""
        if self.probing:
            self.probing -= 1
            if not self.probing and self.mean < self.overhead:
                self.paused_for = 1
            return True
        if self.paused_for:
            self.paused_for += 1
            if self.paused_for > self.probe_every:
                self.paused_for, self.probing = 0, self.probe_steps - 1
                return True
            return False
        if self.scored >= self.warmup and self.mean < self.overhead:
            self.paused_for = 1
            return False
        return True
