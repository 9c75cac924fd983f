"""Draft budgets under load: speculate only as much as pays at the current batch size.

On a GPU at batch 1 the target forward is bound by reading the weights, and verifying a few more
tokens is nearly free. In a batch the forward does more arithmetic per weight read, verification
tokens stop being free, and a draft that pays at batch 1 can make a batch slower than batched
plain decoding (users of every engine report it; measured here for prompt lookup at batch 8:
docs/benchmarks.md, section "GPU: NVIDIA H100"). Each step, `DraftBudget` picks the draft size k
(nodes per sequence) that maximises the batch's expected committed tokens per unit of forward
cost, using each sequence's own acceptance so far:

    E_b(k) = 1 + pi_b * sum_{d=1..k} r_b(d)        tokens sequence b commits with a k-node draft
    gain(k) = sum_b E_b(k) / cost_B(k)             cost_B(0) = 1: a batched plain step

where `r_b(d)` is the fraction of b's steps that drafted at least d tokens and accepted at least
d (blended with a prior while b has few steps), `pi_b` the fraction of b's steps in which its
drafter drafted at all (retrieval drafters often find nothing), and `cost_B(k)` the measured cost
of a forward with k draft tokens per sequence at batch size B, in batched plain steps
(`specdec.cost.measure_batch_cost_model`). k = 0 — no speculation — wins whenever nothing beats
batched plain decoding. Every sequence of a padded batch pays for the longest row, so one k serves
the whole step; a request's own `max_draft_tokens` can only lower it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from specdec.cost import CostModel

#: Draft sizes (nodes per sequence) the budget chooses from, besides 0.
BUDGET_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass
class SequenceRecord:
    """What the budget knows of one sequence: its acceptance counts by depth."""

    offered_steps: int  # steps in which the sequence was allowed to draft
    drafted_at_depth: Sequence[int]  # [d-1] = steps whose draft reached depth d
    accepted_at_depth: Sequence[int]  # [d-1] = steps that accepted >= d draft tokens


class DraftBudget:
    """Chooses the draft size per sequence for a step at a given batch size.

    :param cost_at: batch size -> the `CostModel` of verification at that batch size (nodes per
        sequence -> cost in batched plain steps); called once per step, so cache it.
    :param prior_rate: acceptance prior at depth 1 (depth d: `prior_rate ** d`) for sequences with
        few steps, weighted as `prior_weight` steps.
    """

    def __init__(self, cost_at: Callable[[int], CostModel], sizes: Sequence[int] = BUDGET_SIZES,
                 prior_rate: float = 0.6, prior_weight: float = 2.0):
        self.cost_at = cost_at
        self.sizes = tuple(sizes)
        self.prior_rate = prior_rate
        self.prior_weight = prior_weight

    def expected_tokens(self, record: SequenceRecord, size: int) -> float:
        """E(k): tokens a step commits for this sequence with a draft of `size` nodes."""
        weight = self.prior_weight
        drafted, accepted = record.drafted_at_depth, record.accepted_at_depth
        drafting = ((drafted[0] if drafted else 0) + weight) / (record.offered_steps + weight)
        total = 0.0
        for depth in range(1, size + 1):
            tried = drafted[depth - 1] if depth <= len(drafted) else 0
            kept = accepted[depth - 1] if depth <= len(accepted) else 0
            total += (kept + weight * self.prior_rate ** depth) / (tried + weight)
        return 1.0 + min(drafting, 1.0) * total

    def max_nodes(self, batch_size: int, records: Sequence[SequenceRecord]) -> int:
        """The draft size that maximises expected tokens per unit of cost; 0 = plain decoding.

        :param records: the sequences that may draft; the other `batch_size - len(records)`
            sequences of the step (speculation off) commit one token and pay the padded forward.
        """
        cost = self.cost_at(batch_size)
        plain = batch_size - len(records)
        best_size, best_gain = 0, float(batch_size)
        for size in self.sizes:
            gain = (plain + sum(self.expected_tokens(record, size) for record in records)) / cost.step_cost(size)
            if gain > best_gain:
                best_size, best_gain = size, gain
        return best_size
