"""The `token_recycling` drafter (Token Recycling, Luo et al. 2024).

Each step walks the draft-tree template breadth-first from the root (the last committed token):
a node's children are the top-ranked candidates in its token's row of the adjacency table
(`table.AdjacencyTable`). After verification, the target's logits at the root and at every draft
node, rejected ones included, become the rows of those tokens (`wants_logits`).

The paper verifies the whole 80-node template every step; on a CPU that costs several plain
steps. Here each candidate node gets an estimated chance of acceptance from a
`RecyclingAcceptance` cell (depth 1 or deeper, rank in its row, the token's share of its row's
top-k probability when the row was written), learned online from what was committed
(`specdec.AcceptanceTracker`, exact for deterministic drafts), and `specdec.select_nodes` keeps
the nodes whose expected gain pays for their verification on the measured cost curve, within
the step's `max_nodes`.

Rows are written newest last, as in the paper; within one step the rows of rejected nodes come
first and those of the committed context (the root, then the accepted path) last, so when a
token appears twice its row from the text the model actually wrote wins over a counterfactual
one. No row is ever exact for the next step: the walk stops at a node none of whose drafted
children the target chose (a lossless policy zeroes each rejected child before drawing the
correction token), so the next root was never drafted in the place where it is now committed.

Drafts are deterministic (q is None): each token is a point mass, so `rejection` is lossless at
any temperature and greedy output equals plain greedy decoding.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

from specdec import (AcceptanceTracker, BaseDrafter, CostModel, Draft, DraftContext, SamplingParams, SlotAcceptance,
                     StepOutcome, path_probabilities, select_nodes, subtree_parents)
from specdec_plugin_recycling.table import AdjacencyTable, top_candidates
from specdec_plugin_recycling.templates import PAPER_TREE, TreeTemplate

_EMPTY = Draft.empty()

#: Buckets of a candidate's share of its row (`table.top_candidates`): below 0.05, 0.05-0.2,
#: 0.2-0.5, 0.5-0.8, 0.8-0.95, 0.95 and above.
SHARE_EDGES = (0.05, 0.2, 0.5, 0.8, 0.95)
#: Prior acceptance of a cell, as a factor of its share bucket's middle, for children of the root
#: and for deeper nodes: a row was the target's prediction in another context, so less sure than
#: its share says. With `prior_weight` 4 the learned rate outweighs the prior after a few trials
#: of a cell, and every step scores the whole candidate tree (dozens of trials).
PRIOR_FACTOR = (0.6, 0.5)
_BUCKET_MIDDLE = (0.025, 0.12, 0.35, 0.65, 0.875, 0.975)
#: Siblings exclude each other: their estimated chances are scaled to sum to at most this.
MAX_SIBLING_SUM = 0.99


class RecyclingAcceptance(SlotAcceptance):
    """P(a candidate is accepted | its parent was), per cell (depth 1 or deeper, rank, share
    bucket), learned online with `specdec.SlotAcceptance`'s decayed counts.

    :param top_k: candidates per row (the ranks).
    """

    def __init__(self, top_k: int, *, prior_weight: float = 4.0, decay: float = 0.98):
        self.top_k = top_k
        prior = [factor * middle for factor in PRIOR_FACTOR for _ in range(top_k) for middle in _BUCKET_MIDDLE]
        super().__init__(prior, prior_weight=prior_weight, decay=decay)

    def cell(self, depth: int, rank: int, share: float) -> int:
        bucket = bisect.bisect_right(SHARE_EDGES, share)
        return ((depth > 1) * self.top_k + rank) * len(_BUCKET_MIDDLE) + bucket


@dataclass
class RecyclingState:
    """What the drafter instances of one pipeline share: the table and the learned acceptance."""

    table: AdjacencyTable
    acceptance: RecyclingAcceptance

    @classmethod
    def new(cls, top_k: int = 8) -> "RecyclingState":
        return cls(AdjacencyTable(top_k), RecyclingAcceptance(top_k))


@dataclass
class _Candidates:
    """The template walked from one root: every node that has a token, parents first."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    cells: list[int] = field(default_factory=list)
    conditional: list[float] = field(default_factory=list)  # P(accepted | parent accepted)


class TokenRecyclingDrafter(BaseDrafter):
    """Drafts a tree of recycled candidates (see the module docstring).

    :param tree: the template, as paths of ranks (default: the paper's 80-node tree).
    :param state: the table and acceptance model, shared by the instances of one pipeline
        (default: a new one of the tree's `top_k`).
    :param per_request: start every generation from an empty table (the learned acceptance is
        kept); by default the table is kept across requests, as in the reference implementation.
        Give such a drafter a `state` of its own: `start` clears the table of every instance
        sharing it.
    :param adaptive: draft only the nodes the cost model says pay (possibly none); False drafts
        the likeliest `max_nodes` nodes of the template whenever the table has a row.
    :param cost: verification cost model of the target.
    :param max_nodes: largest draft tree.
    :param min_gain: least expected speed gain (relative to a plain step) worth drafting for.
    """

    wants_logits = True

    def __init__(self, tree: Sequence[Sequence[int]] = PAPER_TREE, *, state: RecyclingState | None = None,
                 per_request: bool = False, adaptive: bool = True, cost: CostModel | None = None,
                 max_nodes: int = 80, min_gain: float = 0.0):
        self.template = TreeTemplate.from_paths(tree)
        self.state = state or RecyclingState.new(max(8, self.template.top_k))
        if self.template.top_k > self.state.table.top_k:
            raise ValueError(f"the tree uses rank {self.template.top_k - 1}, but the table keeps only the top "
                             f"{self.state.table.top_k} candidates per token")
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        self.per_request = per_request
        self.adaptive, self.cost, self.max_nodes, self.min_gain = adaptive, cost or CostModel(), max_nodes, min_gain
        self.tracker = AcceptanceTracker(self.state.acceptance)

    @property
    def table(self) -> AdjacencyTable:
        return self.state.table

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.tracker.reset()
        if self.per_request:
            self.table.clear()

    def candidates(self, tokens: Sequence[int]) -> _Candidates:
        """The template walked from the last of `tokens`, with each node's cell and chance."""
        template, table, acceptance = self.template, self.table, self.state.acceptance
        found = _Candidates()
        index = [-1] * template.num_nodes  # template node -> candidate, -1 = absent
        rows: dict[int, tuple[list[int], list[float]] | None] = {}  # candidate (-1 = root) -> its row
        for node, (parent, rank) in enumerate(zip(template.parents, template.ranks)):
            above = -1 if parent < 0 else index[parent]
            if parent >= 0 and above < 0:
                continue  # the parent has no token: neither has its subtree
            if above not in rows:
                rows[above] = table.row(tokens[-1] if above < 0 else found.tokens[above])
            row = rows[above]
            if row is None:
                continue
            ids, shares = row
            token = ids[rank]
            if token < 0:
                continue  # a vocabulary smaller than top_k
            index[node] = len(found.tokens)
            found.tokens.append(token)
            found.parents.append(above)
            cell = acceptance.cell(len(template.paths[node]), rank, shares[rank])
            found.cells.append(cell)
            found.conditional.append(acceptance.probability(cell))
        return found

    def propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        self.tracker.update(tokens)
        found = self.candidates(tokens)
        if not found.tokens:
            return _EMPTY
        self.tracker.add(len(tokens), found.tokens, found.parents, found.cells)  # learn from all of it
        chances = path_probabilities(found.parents, found.conditional, max_sibling_sum=MAX_SIBLING_SUM)
        limit = self.max_nodes if context.max_nodes is None else min(self.max_nodes, context.max_nodes)
        nodes = select_nodes(chances, found.parents, self.cost, min_gain=self.min_gain, adaptive=self.adaptive,
                             max_nodes=limit, max_depth=context.max_depth)
        if not nodes:
            return _EMPTY
        return Draft([found.tokens[node] for node in nodes], subtree_parents(found.parents, nodes))

    def observe(self, outcome: StepOutcome) -> None:
        tokens = outcome.tokens
        self.tracker.update(tokens)
        if outcome.logits is None:  # inside a composite that does not pass logits on: nothing to recycle
            return
        draft, path = outcome.draft, outcome.path
        root = tokens[len(tokens) - len(path) - 2]
        node_tokens = draft.tokens.tolist()
        # rows by logits row (0 = root, i + 1 = node i): rejected nodes first, then the committed
        # context, so that a token's row from the text actually written wins (newest last)
        accepted = set(path)
        order = [node + 1 for node in range(draft.num_nodes) if node not in accepted]
        order += [0] + [node + 1 for node in path]
        ids, shares = top_candidates(outcome.logits, self.table.top_k)  # every row; reordered below, small
        self.table.write([root if row == 0 else node_tokens[row - 1] for row in order], ids[order], shares[order])
