"""Adaptive drafting: verify only the candidate nodes that pay for their verification.

The cost model. Verifying a draft of m nodes costs `cost(m)` plain steps (one plain step = the
target forward over one token): a curve measured on the target (`node_cost: auto`, or
`benchmarks/verify_cost.py`; it is neither flat nor a line in float32 on a small CPU, and near 1
on a GPU until m is large; measured: docs/benchmarks.md, sections "Retrieval: what limits the
speedup" and "On a GPU (earlier session, H200)"), or the linear model
`1 + draft_overhead + node_cost * m`. A step that verifies the nodes S commits on average
`1 + sum(p_i for i in S)` tokens, where p_i is the probability that node i is accepted (that the
target's tokens follow the path to it). Speed relative to plain decoding is therefore

    R(S) = (1 + sum_S p_i) / cost(|S|)

and the drafter proposes the S that maximizes R, or nothing when max R <= 1 + min_gain. Because
p never grows along a path, the best S of each size is the top nodes by p (a prefix-closed set),
so sorting candidates by p and scanning the prefix ratios finds the optimum
(`specdec.select_nodes`, which Medusa's confidence pruning uses too).

The probabilities. p_i is the product, along the path, of the conditional probability that a
node's token comes next given that its parent's path was accepted. That conditional is read from
an `AcceptanceModel`: decayed success counts per feature cell (matched context length, depth 1 or
deeper, the node's share of its parent's occurrences), with a prior for cells with little data.
The counts are learned online from every candidate tree, drafted or not (`OutcomeTracker`): the
committed tokens reveal which candidate nodes *would* have been accepted. This is exact, not an
approximation: for a deterministic draft, the lossless acceptance rule accepts a node exactly when
the committed token equals it, and committed tokens are distributed as plain decoding whatever was
drafted. So a drafter that stopped drafting keeps measuring, and starts again when the text turns
repetitive.
"""

from __future__ import annotations

import bisect
from typing import Sequence

from specdec import (AcceptanceTracker, CostModel, Draft, SlotAcceptance,  # noqa: F401 - CostModel re-exported
                     select_nodes)
from specdec_plugin_retrieval.candidates import CandidateTree

#: Share buckets: a node's occurrences / (its parent's occurrences + 1). The +1 makes one lone
#: occurrence (share 0.5) less certain than ten that agree (share 0.91).
SHARE_EDGES = (0.25, 0.5, 0.75)


class AcceptanceModel(SlotAcceptance):
    """P(a node's token comes next | its parent's path was accepted), per feature cell: a
    `specdec.SlotAcceptance` whose slots are cells of the retrieval features.

    Cells combine the matched context length (bucketed by `match_edges`, counting the draft
    tokens above the node as matched context), whether the node is at depth 1, and its share
    bucket (`SHARE_EDGES`).

    :param prior: prior mean of each cell, indexed like `cell(...)`.
    """

    def __init__(self, match_edges: Sequence[int], prior: Sequence[float], *,
                 prior_weight: float = 4.0, decay: float = 0.98):
        self.match_edges = tuple(match_edges)
        num_cells = len(self.match_edges) * 2 * (len(SHARE_EDGES) + 1)
        if len(prior) != num_cells:
            raise ValueError(f"prior needs {num_cells} cells, got {len(prior)}")
        super().__init__(prior, prior_weight=prior_weight, decay=decay)

    @property
    def num_cells(self) -> int:
        return self.num_slots

    def cell(self, matched: int, depth: int, share: float) -> int:
        match_bucket = max(bisect.bisect_right(self.match_edges, matched) - 1, 0)
        share_bucket = bisect.bisect_right(SHARE_EDGES, share)
        return (match_bucket * 2 + (depth > 1)) * (len(SHARE_EDGES) + 1) + share_bucket


def prior_table(rows: Sequence[tuple[Sequence[float], Sequence[float]]]) -> list[float]:
    """The prior in cell order from one row per match bucket: (values per share bucket for depth-1
    nodes, values per share bucket for deeper nodes)."""
    table: list[float] = []
    for first, deeper in rows:
        if len(first) != len(SHARE_EDGES) + 1 or len(deeper) != len(SHARE_EDGES) + 1:
            raise ValueError(f"give {len(SHARE_EDGES) + 1} values per depth")
        table.extend(first)
        table.extend(deeper)
    return table


def score(tree: CandidateTree, model: AcceptanceModel) -> tuple[list[int], list[float]]:
    """Each node's cell and its probability of being accepted (the whole path to it)."""
    cells: list[int] = []
    conditional: list[float] = []
    for node in range(tree.num_nodes):
        depth = tree.depths[node]
        share = tree.counts[node] / (tree.parent_count(node) + 1)
        cell = model.cell(tree.matched[node] + depth - 1, depth, share)
        cells.append(cell)
        conditional.append(model.probability(cell))
    # siblings are mutually exclusive: their conditionals must not sum past 1
    for row in tree.children:
        total = sum(conditional[child] for child in row)
        if total > 0.99:
            for child in row:
                conditional[child] *= 0.99 / total
    probabilities: list[float] = []
    for node in range(tree.num_nodes):
        parent = tree.parents[node]
        probabilities.append(conditional[node] * (1.0 if parent < 0 else probabilities[parent]))
    return cells, probabilities


class OutcomeTracker(AcceptanceTracker):
    """`specdec.AcceptanceTracker` for candidate trees: scores them against the committed tokens."""

    def add(self, start: int, tree: CandidateTree, cells: Sequence[int]) -> None:
        super().add(start, tree.tokens, tree.parents, cells)


class AdaptiveDrafting:
    """What both retrieval drafters do with a candidate tree: score it with the acceptance model,
    keep it for online learning (`OutcomeTracker`), and draft the nodes worth verifying.

    :param max_nodes: largest draft tree.
    :param max_leaves: most root-to-leaf branches in a draft tree.
    :param adaptive: draft only what the cost model says pays; False drafts the best `max_nodes`
        nodes whenever there is a candidate.
    """

    def __init__(self, model: AcceptanceModel, *, cost: CostModel, max_nodes: int, max_leaves: int,
                 adaptive: bool = True, min_gain: float = 0.0):
        self.model = model
        self.tracker = OutcomeTracker(model)
        self.cost = cost
        self.max_nodes, self.max_leaves = max_nodes, max_leaves
        self.adaptive, self.min_gain = adaptive, min_gain

    def reset(self) -> None:
        """A new generation: pending trees are dropped, what the model learned is kept."""
        self.tracker.reset()

    def observe(self, tokens: Sequence[int]) -> None:
        """Score the pending candidate trees against the committed `tokens`."""
        self.tracker.update(tokens)

    def draft(self, tree: CandidateTree, start: int, max_depth: int) -> Draft:
        """The draft for `tree`, built when the sequence had `start` tokens."""
        cells, probabilities = score(tree, self.model)
        self.tracker.add(start, tree, cells)
        nodes = select_nodes(probabilities, tree.parents, self.cost, max_nodes=self.max_nodes,
                             max_depth=max_depth, max_leaves=self.max_leaves, adaptive=self.adaptive,
                             min_gain=self.min_gain)
        return tree.draft(nodes)
