"""Step statistics of a generation, with every metric defined once, here.

Conventions (as Spec-Bench and vLLM count them):
- a step is one target forward (draft -> verify -> accept);
- a draft token is a draft node: `Draft.num_nodes` per draft, every branch of a tree included;
  `GenerationStats.draft_tokens` sums them over the steps (vLLM's `spec_decode_num_draft_tokens`);
- mean accepted tokens = committed tokens / steps. It counts the target's own token, so plain
  autoregressive decoding scores exactly 1.0;
- acceptance rate at draft position d = steps that accepted at least d draft tokens / steps whose
  draft reached depth d;
- tokens/s = generated tokens / wall time of the whole generation, prefill included.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class StepClock:
    """The time one sequence's current step has spent so far, by phase.

    The scheduler charges each phase as it happens (drafting: `start`, `propose`, `observe`; a
    batched `propose_batch` or the shared verification forward split evenly between the
    sequences of the step); `GenerationStats.record_step` books the totals and resets the clock.
    """

    draft_seconds: float = 0.0
    verify_seconds: float = 0.0

    @contextmanager
    def drafting(self) -> Iterator[None]:
        """Charge the time of the `with` block to drafting, even when it raises."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.draft_seconds += time.perf_counter() - started


def mean_accepted_tokens(tokens: int, steps: int) -> float:
    """Committed tokens per step (target forward). It counts the target's own token, so plain
    autoregressive decoding scores exactly 1.0.

    :param tokens: tokens committed over the steps
    :param steps: target forwards
    :returns: ``tokens / steps``, or 0.0 when no step was taken
    """
    return tokens / steps if steps else 0.0


def tokens_per_second(tokens: int, seconds: float) -> float:
    """Generated tokens per second of wall time; the time is the whole generation's, prefill
    included.

    :param tokens: tokens generated
    :param seconds: wall time that generated them
    :returns: ``tokens / seconds``, or 0.0 when no time was measured (``seconds <= 0``)
    """
    return tokens / seconds if seconds > 0 else 0.0


@dataclass
class GenerationStats:
    steps: int = 0
    new_tokens: int = 0
    draft_tokens: int = 0  # draft nodes verified, all branches of a tree (a draft token = a node)
    accepted_draft_tokens: int = 0
    draft_seconds: float = 0.0  # inside Drafter.propose / observe (and start, charged to the first step)
    verify_seconds: float = 0.0  # target forward + acceptance + cache commit
    wall_seconds: float = 0.0
    accepted_length_histogram: list[int] = field(default_factory=list)  # [n] = steps accepting n
    drafted_at_depth: list[int] = field(default_factory=list)  # [d-1] = steps whose draft reached depth d
    accepted_at_depth: list[int] = field(default_factory=list)  # [d-1] = steps that accepted >= d
    clock: StepClock = field(default_factory=StepClock, repr=False, compare=False)  # the step in progress

    def record_step(self, *, draft_tokens: int, draft_depth: int, accepted: int, new_tokens: int) -> None:
        """Book one finished step: its counts, and the time its `clock` gathered (then reset).

        :param draft_tokens: draft nodes verified (`Draft.num_nodes`: every branch of a tree).
        :param draft_depth: the draft's deepest node (`Draft.max_depth`).
        :param accepted: accepted draft tokens (the path's length).
        :param new_tokens: tokens committed (accepted + the target's own, fewer after a stop).
        """
        self.steps += 1
        self.new_tokens += new_tokens
        self.draft_tokens += draft_tokens
        self.accepted_draft_tokens += accepted
        self.draft_seconds += self.clock.draft_seconds
        self.verify_seconds += self.clock.verify_seconds
        self.clock = StepClock()
        _bump(self.accepted_length_histogram, accepted)
        for depth in range(draft_depth):
            _bump(self.drafted_at_depth, depth)
        for depth in range(accepted):
            _bump(self.accepted_at_depth, depth)

    @property
    def mean_accepted_tokens(self) -> float:
        return mean_accepted_tokens(self.new_tokens, self.steps)

    @property
    def tokens_per_second(self) -> float:
        return tokens_per_second(self.new_tokens, self.wall_seconds)

    @property
    def draft_ms_per_step(self) -> float:
        """Mean time a step spent drafting (lookup, draft forwards, state updates)."""
        return 1000.0 * self.draft_seconds / self.steps if self.steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / proposed draft tokens (a tree's unused branches count)."""
        return self.accepted_draft_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        accepted = self.accepted_at_depth
        return [(accepted[depth] if depth < len(accepted) else 0) / drafted
                for depth, drafted in enumerate(self.drafted_at_depth)]

    def merge(self, other: "GenerationStats") -> "GenerationStats":
        """Sum of two runs' statistics (for aggregating over prompts)."""
        merged = GenerationStats(
            steps=self.steps + other.steps,
            new_tokens=self.new_tokens + other.new_tokens,
            draft_tokens=self.draft_tokens + other.draft_tokens,
            accepted_draft_tokens=self.accepted_draft_tokens + other.accepted_draft_tokens,
            draft_seconds=self.draft_seconds + other.draft_seconds,
            verify_seconds=self.verify_seconds + other.verify_seconds,
            wall_seconds=self.wall_seconds + other.wall_seconds,
        )
        for name in ("accepted_length_histogram", "drafted_at_depth", "accepted_at_depth"):
            setattr(merged, name, _add_lists(getattr(self, name), getattr(other, name)))
        return merged

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "new_tokens": self.new_tokens,
            "draft_tokens": self.draft_tokens,
            "accepted_draft_tokens": self.accepted_draft_tokens,
            "mean_accepted_tokens": self.mean_accepted_tokens,
            "tokens_per_second": self.tokens_per_second,
            "acceptance_rate": self.acceptance_rate,
            "acceptance_by_position": self.acceptance_by_position,
            "accepted_length_histogram": list(self.accepted_length_histogram),
            "draft_ms_per_step": self.draft_ms_per_step,
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "wall_seconds": self.wall_seconds,
        }

    def summary(self) -> str:
        """One line for humans, as the CLI prints it."""
        line = (f"{self.new_tokens} tokens in {self.wall_seconds:.2f} s "
                f"({self.tokens_per_second:.1f} tok/s), {self.steps} steps, "
                f"mean accepted tokens {self.mean_accepted_tokens:.2f}")
        if self.draft_tokens:
            line += f", drafting {self.draft_ms_per_step:.1f} ms/step"
            rates = " ".join(f"{rate:.2f}" for rate in self.acceptance_by_position)
            line += f", acceptance by position [{rates}]"
        return line


def _bump(counts: list[int], index: int) -> None:
    while len(counts) <= index:
        counts.append(0)
    counts[index] += 1


def _add_lists(left: list[int], right: list[int]) -> list[int]:
    size = max(len(left), len(right))
    return [(left[i] if i < len(left) else 0) + (right[i] if i < len(right) else 0) for i in range(size)]
