"""The `merge` drafter: every member drafts, their trees become one trie, pruned to what pays.

Prompt lookup is strong where the answer copies its context, Token Recycling where the model
repeats its own habits; asking both and verifying the union of their trees keeps what each is good
at (SAM-Decoding, Graft). Each step:

1. every member proposes from the same `DraftContext`;
2. their trees are merged into one trie (`specdec.merge_trees`): the same token under the same
   parent is one node, parents before children;
3. each node gets an estimated chance of acceptance given its parent: the member's own
   `Draft.confidence` when it gives one, else that member's acceptance rate for nodes of that
   depth and rank among their siblings (drafters put the likeliest sibling first), learned online
   from the committed tokens (`specdec.SlotAcceptance` through `specdec.AcceptanceTracker`, exact
   for deterministic drafts). A node several members proposed takes the largest of their
   estimates (`combine: max`, the default; `noisy_or` takes `1 - prod(1 - p)`, which treats the
   members as independent witnesses: they rarely are, since they read the same text, so it
   overestimates). Siblings exclude each other, so their estimates are scaled to sum to at most
   `MAX_SIBLING_SUM`; a node's chance is the product along its path;
4. `specdec.select_nodes` scans the nodes likeliest first (so parents come before children and
   every prefix of the scan is closed under ancestors) and keeps the prefix with the most expected
   committed tokens per unit of verification cost (`specdec.CostModel`; `node_cost: auto`
   measures the target's curve), within `max_nodes` and the step's own budget.

Lossless as long as every candidate is deterministic (q is None): each node is then a point mass,
which the rejection policy verifies losslessly whatever tree it sits in. A member that
returns a sampled draft (q set) fails the step with a `DraftError` naming it; the pipeline
validator already refuses members configured to sample (`greedy_draft: false`).

Aux rows (lookahead's Jacobi window, `AuxTokens`): at most one member may return aux rows in a
step; they pass through with their attention columns renumbered to the merged tree (columns of
pruned nodes dropped), and that member alone hears `StepOutcome.aux_logits`. Two members with
aux rows in one step are a `DraftError`.

What members hear (`observe`): each member's `StepOutcome` is translated to its own draft when
that is exact: when every accepted node is one the member proposed (and, for a member that reads
`logits`, every node it proposed was verified), it hears its own draft object, the path in its own
node numbers and, if it asked for them, the logits rows of its own nodes; it cannot tell the step
from one that verified its draft alone (except that other members' siblings may also have been
rejected before the target's token was drawn). Otherwise it hears the merged draft as verified, a
foreign draft exactly as inside `fallback`: drafters check `outcome.draft.derives_from(their draft)`
before trusting `outcome.path`, and read the committed `tokens`. Every member hears every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from specdec.cost import AcceptanceTracker, CostModel, SlotAcceptance, path_probabilities, select_nodes
from specdec.draft import AuxTokens, Draft, merge_trees
from specdec.errors import DraftError
from specdec.protocols import BaseDrafter, DraftContext, Drafter, StepOutcome
from specdec.sampling import SamplingParams

#: Depths with their own learned acceptance rate per member; deeper nodes share the last one.
DEPTH_SLOTS = 8
#: Prior P(accepted | parent accepted) of a member's node by its rank among its siblings in the
#: member's draft (drafters put the likeliest sibling first), before its outcomes are known; worth
#: `SlotAcceptance`'s 4 pseudo-trials. Later siblings share the last rank.
RANK_PRIOR = (0.5, 0.2, 0.1, 0.05)
#: Siblings exclude each other: their conditional estimates are scaled to sum to at most this.
MAX_SIBLING_SUM = 0.99
#: How a node proposed by several members combines their estimates.
COMBINE = ("max", "noisy_or")


@dataclass(frozen=True, eq=False)
class _Step:
    """One proposal, kept until its outcome: what each member drafted and where it went."""

    draft: Draft  # the merged draft returned to the engine
    members: tuple[Draft, ...]  # each member's draft, as it returned it
    index: tuple[tuple[int, ...], ...]  # [member][member node] -> node of `draft`, -1 = pruned
    sources: tuple[tuple[int, ...], ...]  # [node of `draft`] -> members that proposed it
    aux_member: int  # the member whose aux rows ride along, -1 = none


class MergeDrafter(BaseDrafter):
    """Verifies one tree merged from several deterministic drafters (see the module docstring).

    :param drafters: the members; each keeps its own state and hears every outcome.
    :param names: how errors name the members (default: their class names).
    :param cost: verification cost model of the target (default: the linear `CostModel()`).
    :param max_nodes: largest merged tree (None: only the step's `max_nodes` and the cost model).
    :param min_gain: least expected speed gain (relative to a plain step) worth drafting for.
    :param adaptive: keep only the nodes that pay on the cost model (possibly none); False keeps
        the likeliest nodes up to the node limits.
    :param combine: "max" or "noisy_or", for a node several members proposed.
    """

    def __init__(self, drafters: Sequence[Drafter], names: Sequence[str] | None = None, *,
                 cost: CostModel | None = None, max_nodes: int | None = None, min_gain: float = 0.0,
                 adaptive: bool = True, combine: str = "max"):
        if not drafters:
            raise ValueError("merge needs at least one drafter")
        if names is not None and len(names) != len(drafters):
            raise ValueError(f"merge got {len(drafters)} drafters but {len(names)} names")
        if max_nodes is not None and max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1 or None, got {max_nodes}")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        self.drafters = list(drafters)
        self.names = [f"{index} ({name})" for index, name in
                      enumerate(names or [type(drafter).__name__ for drafter in self.drafters])]
        self.hidden_state_layers = tuple(sorted({layer for drafter in self.drafters
                                                 for layer in drafter.hidden_state_layers}))
        self.wants_logits = any(getattr(drafter, "wants_logits", False) for drafter in self.drafters)
        self.cost = cost or CostModel()
        self.max_nodes, self.min_gain, self.adaptive, self.combine = max_nodes, min_gain, adaptive, combine
        # learned per member across requests, like the retrieval drafters' acceptance models
        self.acceptance = [SlotAcceptance([rate for _ in range(DEPTH_SLOTS) for rate in RANK_PRIOR])
                           for _ in self.drafters]
        self.trackers = [AcceptanceTracker(acceptance) for acceptance in self.acceptance]
        self.contributed = [0] * len(self.drafters)  # steps in which a member's node was verified
        self.accepted = [0] * len(self.drafters)  # accepted nodes that a member had proposed
        self._step: _Step | None = None

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self._step = None
        for drafter, tracker in zip(self.drafters, self.trackers):
            tracker.reset()
            drafter.start(prompt, params)

    # -- proposing ----------------------------------------------------------------------------

    def propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        for tracker in self.trackers:
            tracker.update(tokens)
        members = tuple(self._member_draft(member, drafter, context) for member, drafter in enumerate(self.drafters))
        slots = [node_slots(draft.parents) for draft in members]
        for member, draft in enumerate(members):
            if draft.num_nodes:  # learn from every node proposed, verified or not (exact: no q)
                self.trackers[member].add(len(tokens), draft.tokens.tolist(), draft.parents, slots[member])
        node_tokens, parents, index = merge_trees((draft.tokens.tolist(), draft.parents) for draft in members)
        sources: list[list[int]] = [[] for _ in node_tokens]
        conditional = [0.0] * len(node_tokens)
        for member, (draft, nodes) in enumerate(zip(members, index)):
            for member_node, node in enumerate(nodes):
                chance = (draft.confidence[member_node] if draft.confidence is not None
                          else self.acceptance[member].probability(slots[member][member_node]))
                if self.combine == "max" or not sources[node]:
                    conditional[node] = max(conditional[node], chance)
                else:
                    conditional[node] = 1.0 - (1.0 - conditional[node]) * (1.0 - chance)
                sources[node].append(member)
        aux_member = self._aux_member(members)
        merged = Draft(torch.tensor(node_tokens, dtype=torch.long), parents,
                       aux=None if aux_member < 0 else _renumbered_aux(members[aux_member], index[aux_member],
                                                                       len(node_tokens)),
                       confidence=conditional)
        limit = context.max_nodes if self.max_nodes is None else (
            self.max_nodes if context.max_nodes is None else min(self.max_nodes, context.max_nodes))
        chances = path_probabilities(parents, conditional, max_sibling_sum=MAX_SIBLING_SUM)
        kept = select_nodes(chances, parents, self.cost, min_gain=self.min_gain, adaptive=self.adaptive,
                            max_nodes=limit, max_depth=context.max_depth) if node_tokens else []
        draft = merged.subtree(kept)
        position = {node: new for new, node in enumerate(kept)}
        self._step = _Step(draft, members,
                           tuple(tuple(position.get(node, -1) for node in nodes) for nodes in index),
                           tuple(tuple(sources[node]) for node in kept), aux_member)
        return draft

    def _member_draft(self, member: int, drafter: Drafter, context: DraftContext) -> Draft:
        draft = drafter.propose(context)
        if not isinstance(draft, Draft):
            raise DraftError(f"merge: drafter {self.names[member]} returned {type(draft).__name__}, "
                             f"expected a specdec.Draft")
        if draft.q is not None and draft.num_nodes:
            raise DraftError(
                f"merge: drafter {self.names[member]} returned a sampled draft (q is set); merge verifies "
                f"deterministic candidates only, whose tokens are point masses. Configure it to draft "
                f"greedily (greedy_draft: true) or use a deterministic drafter (prompt_lookup, "
                f"token_recycling, medusa)")
        return draft

    def _aux_member(self, members: Sequence[Draft]) -> int:
        carrying = [member for member, draft in enumerate(members) if draft.num_aux]
        if len(carrying) > 1:
            raise DraftError(f"merge: drafters {', '.join(self.names[member] for member in carrying)} all "
                             f"returned aux rows in one step; at most one member may carry aux rows")
        return carrying[0] if carrying else -1

    # -- hearing the outcome ------------------------------------------------------------------

    def observe(self, outcome: StepOutcome) -> None:
        for tracker in self.trackers:
            tracker.update(outcome.tokens)
        step, self._step = self._step, None
        if step is not None and outcome.draft is not step.draft:
            step = None  # the engine trimmed our draft (deeper or larger than the step allowed)
        if step is not None:
            for member in {member for node_sources in step.sources for member in node_sources}:
                self.contributed[member] += 1
            for node in outcome.path:
                for member in step.sources[node]:
                    self.accepted[member] += 1
        for member, drafter in enumerate(self.drafters):
            drafter.observe(self._member_outcome(member, drafter, outcome, step))

    def _member_outcome(self, member: int, drafter: Drafter, outcome: StepOutcome, step: _Step | None) -> StepOutcome:
        """The outcome as `member` should hear it (see the module docstring)."""
        own_layers = drafter.hidden_state_layers
        hidden_states = {layer: states for layer, states in outcome.hidden_states.items() if layer in own_layers}
        wants_logits = getattr(drafter, "wants_logits", False)
        aux_logits = outcome.aux_logits if step is not None and step.aux_member == member else None
        foreign = replace(outcome, hidden_states=hidden_states, aux_logits=aux_logits,
                          logits=outcome.logits if wants_logits else None)
        if step is None:
            return foreign
        index, draft = step.index[member], step.members[member]
        path = _translated(outcome.path, index, draft.parents)
        if path is None:
            return foreign  # the accepted path leaves the member's tree
        logits = None
        if wants_logits and outcome.logits is not None:
            if any(node < 0 for node in index):
                return foreign  # some of its nodes were not verified: no logits rows for them
            rows = torch.tensor([0] + [node + 1 for node in index], dtype=torch.long, device=outcome.logits.device)
            logits = outcome.logits[rows]
        return replace(foreign, draft=draft, path=path, logits=logits)


def _translated(path: Sequence[int], index: Sequence[int], parents: Sequence[int]) -> tuple[int, ...] | None:
    """A merged path in a member's node numbers (`index`: member node -> merged node, -1 =
    pruned), or None when it leaves the member's tree. A member may repeat a token among
    siblings (two member nodes, one merged node): any of its paths with those tokens will do."""
    frontier = [-1]  # member nodes (or the root) whose path matches the merged path so far
    for node in path:
        reached = set(frontier)
        frontier = [mine for mine, merged in enumerate(index) if merged == node and parents[mine] in reached]
        if not frontier:
            return None
    translated, mine = [], frontier[0]
    while mine >= 0:  # each frontier node's parent was in the previous frontier
        translated.append(mine)
        mine = parents[mine]
    return tuple(reversed(translated))


def node_slots(parents: Sequence[int]) -> list[int]:
    """The acceptance slot of every node of a member's draft: its depth (up to `DEPTH_SLOTS`)
    and its rank among its siblings (up to `len(RANK_PRIOR)`)."""
    depths: list[int] = []
    seen: dict[int, int] = {}  # parent -> children so far
    slots = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
        rank = seen.get(parent, 0)
        seen[parent] = rank + 1
        slots.append((min(depths[-1], DEPTH_SLOTS) - 1) * len(RANK_PRIOR) + min(rank, len(RANK_PRIOR) - 1))
    return slots


def _renumbered_aux(draft: Draft, index: Sequence[int], num_nodes: int) -> AuxTokens:
    """A member's aux rows with their attention columns moved to its nodes' merged numbers."""
    aux = draft.aux
    count = draft.num_aux
    attends_to = torch.zeros(count, num_nodes + count, dtype=torch.bool, device=aux.attends_to.device)
    if index:
        columns = torch.tensor(list(index), dtype=torch.long, device=aux.attends_to.device)
        attends_to[:, columns] = aux.attends_to[:, : len(index)]
    attends_to[:, num_nodes:] = aux.attends_to[:, draft.num_nodes:]
    return AuxTokens(aux.tokens, aux.position_offsets, attends_to)
