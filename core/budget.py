"""Draft budgets under load: speculate only as much as pays at the current batch size.

On a GPU at batch 1 the target forward is bound by reading the weights, and verifying a few more
tokens is nearly free. In a batch the forward does more arithmetic per weight read, verification
tokens stop being free, and a draft that pays at batch 1 can make a batch slower than batched
plain decoding (measured here for prompt lookup at batch 8: docs/benchmarks.md, section "GPU:
NVIDIA H100"). `DraftBudget` decides twice per step, with each sequence's own acceptance so far:

- before drafting, `max_nodes`: the most nodes per sequence worth drafting, as if every sequence
  drafted (an upper bound on what can pay, so that model-based drafters do not draft for nothing);
- after drafting, `trimmed_size`: knowing which sequences drafted and how much (a retrieval
  drafter often finds nothing), the size k every draft is cut to (its first k nodes: a valid
  tree) that maximises the step's expected committed tokens per unit of forward cost:

    E_b(k) = 1 + sum_{d=1..min(k, n_b)} r_b(d)      tokens sequence b commits, n_b its draft's nodes
    gain(k) = sum_b E_b(k) / cost_B(min(k, max_b n_b))     cost_B(0) = 1: a batched plain step

where `r_b(d)` is the fraction of b's steps that drafted at least d tokens and accepted at least
d (blended with a prior while b has few steps) and `cost_B(m)` the measured cost of a forward
with m draft tokens per sequence at batch size B, in batched plain steps
(`specdec.cost.measure_batch_cost_model`). Before drafting, the drafting itself is counted too:
drafters run one after another on the host, so each sequence's mean `propose` time, over the
measured seconds of a batched plain step, adds to the cost of every k > 0. On a GPU, where a
batched step takes milliseconds, a large batch's drafting can take longer than its forward
(the serving benchmark on an H100, docs/benchmarks.md). Every sequence of a padded batch pays
for the longest row, so one k serves the whole step; a request's own `max_draft_tokens` can only lower it. k = 0,
no speculation, wins whenever nothing beats batched plain decoding. Deciding before drafting
alone would have to guess who drafts: averaged over sequences, that guess let a few sequences'
drafts widen every step of a large batch (the serving benchmark in docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from specdec.cost import CostModel

#: Draft sizes (nodes per sequence) the budget chooses from, besides 0.
BUDGET_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass
class SequenceRecord:
    """What the budget knows of one sequence: its acceptance counts by depth, and what its
    drafter's `propose` calls took."""

    drafted_at_depth: Sequence[int]  # [d-1] = steps whose draft reached depth d
    accepted_at_depth: Sequence[int]  # [d-1] = steps that accepted >= d draft tokens
    propose_seconds: float = 0.0  # in all its drafter's propose calls so far
    proposals: int = 0  # how many calls

    def seconds_per_proposal(self) -> float | None:
        return self.propose_seconds / self.proposals if self.proposals else None


class DraftBudget:
    """Chooses the draft size per sequence for a step at a given batch size.

    :param cost_at: batch size -> the `CostModel` of verification at that batch size (nodes per
        sequence -> cost in batched plain steps); called once per step, so cache it.
    :param prior_rate: acceptance at depth 1 (depth d: `prior_rate ** d`) assumed before any
        sequence has finished, weighted as `population_weight` steps against what finished
        sequences achieved (`retire`); that blend is the prior of a sequence with few steps of its
        own, weighted as `prior_weight` steps. Short requests under load live mostly on the
        prior, so it is learned: a fixed optimistic one let every newcomer widen the batch.
    """

    def __init__(self, cost_at: Callable[[int], CostModel], sizes: Sequence[int] = BUDGET_SIZES,
                 prior_rate: float = 0.6, prior_weight: float = 2.0, population_weight: float = 8.0):
        self.cost_at = cost_at
        self.sizes = tuple(sizes)
        self.prior_rate = prior_rate
        self.prior_weight = prior_weight
        self.population_weight = population_weight
        self._retired = SequenceRecord([], [])

    def prepare(self, max_batch_size: int) -> None:
        """Get the cost model of every batch size up to `max_batch_size` now. A cost measured on
        first use (`measure_batch_cost_model`) runs inside the step that first reaches that batch
        size and stalls every sequence of it; servers and benchmarks prepare instead
        (`StepScheduler.prepare`)."""
        for batch_size in range(2, max_batch_size + 1):
            self.cost_at(batch_size)

    def retire(self, record: SequenceRecord) -> None:
        """Learn from a finished sequence: its counts join the population the prior comes from."""
        def added(left: Sequence[int], right: Sequence[int]) -> list[int]:
            size = max(len(left), len(right))
            return [(left[i] if i < len(left) else 0) + (right[i] if i < len(right) else 0) for i in range(size)]

        retired = self._retired
        self._retired = SequenceRecord(added(retired.drafted_at_depth, record.drafted_at_depth),
                                       added(retired.accepted_at_depth, record.accepted_at_depth),
                                       retired.propose_seconds + record.propose_seconds,
                                       retired.proposals + record.proposals)

    def drafting_cost(self, records: Sequence[SequenceRecord], cost: CostModel) -> float:
        """What the sequences' drafting costs per step, in batched plain steps: the sum of their
        mean `propose` seconds (a newcomer's: finished sequences' mean) over the plain step's
        measured seconds; 0 when the plain step was not measured."""
        if cost.plain_seconds <= 0:
            return 0.0
        population = self._retired.seconds_per_proposal() or 0.0
        seconds = sum(population if (own := record.seconds_per_proposal()) is None else own for record in records)
        return seconds / cost.plain_seconds

    def priors(self, depth: int) -> list[float]:
        """The prior acceptance rate at depths 1..depth: finished sequences' rate, blended with
        `prior_rate ** d`."""
        weight, drafted, accepted = self.population_weight, self._retired.drafted_at_depth, self._retired.accepted_at_depth
        return [((accepted[d - 1] if d <= len(accepted) else 0) + weight * self.prior_rate ** d)
                / ((drafted[d - 1] if d <= len(drafted) else 0) + weight) for d in range(1, depth + 1)]

    def accepted_tokens(self, record: SequenceRecord, size: int, priors: Sequence[float] | None = None) -> float:
        """Expected accepted draft tokens of a draft `size` deep: sum over d <= size of r(d)."""
        priors = self.priors(size) if priors is None else priors
        weight = self.prior_weight
        drafted, accepted = record.drafted_at_depth, record.accepted_at_depth
        total = 0.0
        for depth in range(1, size + 1):
            tried = drafted[depth - 1] if depth <= len(drafted) else 0
            kept = accepted[depth - 1] if depth <= len(accepted) else 0
            total += (kept + weight * priors[depth - 1]) / (tried + weight)
        return total

    def max_nodes(self, batch_size: int, records: Sequence[SequenceRecord]) -> int:
        """Before drafting: the most nodes per sequence worth drafting, as if each of `records`
        drafted that many; 0 = plain decoding.

        :param records: the sequences that may draft; the other `batch_size - len(records)`
            sequences of the step (speculation off) commit one token and pay the padded forward.
        """
        return self._best(batch_size, [(record, max(self.sizes)) for record in records],
                          self.drafting_cost(records, self.cost_at(batch_size)))

    def trimmed_size(self, batch_size: int, drafted: Sequence[tuple[SequenceRecord, int]]) -> int:
        """After drafting: the size every draft of the step is cut to; 0 = verify no draft.

        :param drafted: (record, draft nodes) of each sequence that drafted; the other sequences
            commit one token each.
        """
        return self._best(batch_size, [(record, nodes) for record, nodes in drafted if nodes > 0])

    def _best(self, batch_size: int, drafts: Sequence[tuple[SequenceRecord, int]], drafting: float = 0.0) -> int:
        """The size with the most committed tokens per unit of cost; `drafting` (in batched plain
        steps) is added to the cost of every size but 0."""
        longest = max((nodes for _, nodes in drafts), default=0)
        if not longest:
            return 0
        cost = self.cost_at(batch_size)
        priors = self.priors(longest)
        best_size, best_gain = 0, float(batch_size)
        for size in sorted({min(size, longest) for size in self.sizes} | {longest}):
            tokens = batch_size + sum(self.accepted_tokens(record, min(size, nodes), priors) for record, nodes in drafts)
            gain = tokens / (cost.step_cost(size) + drafting)
            if gain > best_gain:
                best_size, best_gain = size, gain
        return best_size
