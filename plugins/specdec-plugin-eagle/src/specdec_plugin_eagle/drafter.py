"""The `eagle` drafter: the draft model autoregresses on the target's own features.

Each verification pass hands `observe` the target's features at the positions it committed (no
extra target forward). A step then:

1. feeds the draft model the committed positions it has not seen, each as (feature at i, token
   at i + 1), in one causal forward over its own KV cache; the last output drafts depth 1;
2. grows the tree level by level (EAGLE-2): every node of the frontier gets its `top_k` most
   likely children, scored by their path probability (the product of the draft's probabilities
   along the path); the `frontier` best nodes of the new level are fed back, all in one batched
   forward with tree attention, to draft the next level;
3. keeps the nodes whose expected acceptance pays for their verification (`specdec.select_nodes`
   under the target's cost curve), or nothing when no draft beats a plain step.

The draft's cache keeps only the entries of committed positions, computed from the target's real
features: `observe` rolls it back to them (an index move), and the accepted positions are fed
again next step with the features the target computed for them, as the EAGLE authors do.

Sampling (temperature > 0): by default the children are *drawn* without replacement from the
draft's warped distribution and carry their exact q (the parent's distribution with the earlier
siblings removed), as `specdec.testing` documents. Dropping a drawn node because of the token it
drew would bias what is kept, so a sampled tree is never pruned after drawing: how many children a
node gets is decided before they are drawn, from the node's path probability and its own
distribution. `sample: false` drafts top-k tokens at every temperature instead (no q; lossless
too, accepted less often when sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from specdec import (BaseDrafter, CostModel, Draft, DraftContext, SamplingParams, StepOutcome, running_linear_kernels,
                     select_nodes, warp_logits)

from specdec_plugin_eagle.model import DraftCache, EagleDraftModel


@dataclass(frozen=True)
class TreeShape:
    """How far a step's tree may grow (EAGLE-2's depth, top-k and total tokens).

    :param depth: deepest level drafted.
    :param top_k: children drafted below each expanded node.
    :param frontier: nodes of a level expanded to the next (1 with `top_k` 1: a chain).
    :param max_nodes: most nodes a step verifies.
    """

    depth: int = 6
    top_k: int = 4
    frontier: int = 4
    max_nodes: int = 24


@dataclass
class _Node:
    token: int
    parent: int  # -1: the root
    depth: int
    chance: float  # draft probability given the parent
    path: float  # product of `chance` along the path
    q: torch.Tensor | None = None  # [V] the distribution the token was drawn from


class EagleDrafter(BaseDrafter):
    """Drafts trees (or chains) with `model` over its own KV cache.

    :param model: the draft model, on the target's device.
    :param shape: the tree's limits.
    :param cost: the target's verification cost curve; None verifies every drafted node.
    :param min_gain: least expected speed gain over a plain step worth drafting for.
    :param sample: draw drafts from the draft distribution when sampling (with their q).
    """

    def __init__(self, model: EagleDraftModel, shape: TreeShape = TreeShape(), cost: CostModel | None = None,
                 min_gain: float = 0.0, sample: bool = True):
        self.model = model
        self.shape = shape
        self.cost = cost
        self.min_gain = min_gain
        self.sample = sample
        self.hidden_state_layers = tuple(model.config.feature_layers)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        config = model.config
        self.cache = DraftCache(config.num_key_value_heads, config.head_dim, self.dtype, self.device)
        self._features: torch.Tensor | None = None  # [n, F] target features of positions cache.length...
        self._expand_threshold = self._threshold()
        self._ids_source: torch.Tensor | None = None  # the `model.draft_ids` that `_ids` lists, at
        self._ids_version = -1  # ... this in-place version
        self._ids: list[int] = []

    def _threshold(self) -> float:
        """Least path probability worth a node: the average cost of a node over a tree of
        `max_nodes` nodes, in plain steps (a node accepted with a smaller chance costs more than it
        brings even at that size)."""
        if self.cost is None:
            return 0.0
        size = self.shape.max_nodes
        return max(0.0, (self.cost.step_cost(size) - self.cost.step_cost(0)) / size)

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.cache.length = 0
        self._features = None

    def observe(self, outcome: StepOutcome) -> None:
        rows = torch.cat([outcome.hidden_states[layer] for layer in self.hidden_state_layers], dim=-1)
        first = len(outcome.tokens) - 1 - rows.shape[0]  # position of rows[0]; the last row is at n - 2
        known = self.cache.length + (0 if self._features is None else self._features.shape[0])
        if first > known:
            raise RuntimeError(f"the drafter missed the target features of positions {known} to {first - 1}")
        rows = rows[known - first:].to(self.device, self.dtype)
        self._features = rows if self._features is None else torch.cat((self._features, rows))
        # nothing to roll back: `cache.length` counts committed positions only, and the tree's
        # scratch entries past it are overwritten by the next step

    @torch.inference_mode()
    def propose(self, context: DraftContext) -> Draft:
        with running_linear_kernels(self.model):  # the kernel its target runs (pipeline.target.linear_kernel)
            return self._propose(context)

    def _propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        count = len(tokens)
        if self._features is None or self.cache.length + self._features.shape[0] != count - 1:
            return Draft.empty()  # the prefill step: no target feature yet
        max_depth = min(self.shape.depth, context.max_depth)
        if max_depth < 1 or self._features.shape[0] == 0:
            return Draft.empty()
        output = self._catch_up(tokens)  # [H] the root's output: drafts depth 1
        sample = self.sample and not context.params.greedy
        limit = self.shape.max_nodes if context.max_nodes is None else min(self.shape.max_nodes, context.max_nodes)
        if limit < 1:
            return Draft.empty()
        # a sampled tree stops drawing at `limit` nodes (never pruned after drawing); a deterministic
        # one grows a pool twice that size for `select_nodes` to choose from
        nodes = self._grow(output, count, max_depth, context, sample, limit if sample else 2 * limit)
        if not nodes:
            return Draft.empty()
        parents = [node.parent for node in nodes]
        ids = torch.tensor([node.token for node in nodes], dtype=torch.long)
        confidence = [min(1.0, node.chance) for node in nodes]
        if sample:
            q = torch.stack([node.q for node in nodes])
            return Draft(ids, parents, q=q, confidence=confidence)
        draft = Draft(ids, parents, confidence=confidence)
        if self.cost is None:
            return draft.subtree(sorted(select_nodes([n.path for n in nodes], parents, CostModel(node_cost=0.0),
                                                     adaptive=False, max_nodes=limit)))
        kept = select_nodes([node.path for node in nodes], parents, self.cost, min_gain=self.min_gain,
                            max_nodes=limit)
        return draft.subtree(sorted(kept))

    def _catch_up(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed the committed positions the cache lacks; returns the last one's output `[H]`."""
        start = self.cache.length
        features, self._features = self._features, self._features[:0]
        count = features.shape[0]
        positions = torch.arange(start, start + count, device=self.device)
        ids = torch.tensor(tokens[start + 1:start + 1 + count], dtype=torch.long, device=self.device)
        visible = torch.ones(count, start + count, dtype=torch.bool, device=self.device).tril(start)
        hidden = self.model.project_features(features)[None]
        output = self.model(ids[None], hidden, positions[None], self.cache.attention(positions, visible))
        self.cache.length = start + count
        return output[0, -1]

    def _grow(self, root_output: torch.Tensor, count: int, max_depth: int, context: DraftContext,
              sample: bool, budget: int) -> list[_Node]:
        """The tree, level by level (parents before children, siblings in drafting order), at most
        `budget` nodes."""
        model, shape = self.model, self.shape
        base = self.cache.length  # = count - 1: scratch entries of the tree start here
        nodes: list[_Node] = []
        entry: dict[int, int] = {}  # node -> its scratch entry (nodes fed to the draft model)
        produced = {-1: root_output}  # node -> the output it was fed to (drafts its children)
        frontier = [-1]  # nodes to expand (-1: the root)
        outputs = root_output[None]  # [len(frontier), H]
        for depth in range(1, max_depth + 1):
            logits = model.logits(outputs).float()  # [len(frontier), Vd]
            first = len(nodes)
            if sample:
                for row, parent in enumerate(frontier):
                    path = 1.0 if parent < 0 else nodes[parent].path
                    nodes.extend(self._drawn_children(logits[row], parent, depth, path, context, budget - len(nodes)))
            else:
                nodes.extend(self._top_children(logits, frontier, nodes, depth, budget - len(nodes)))
            if len(nodes) == first or depth == max_depth or len(nodes) >= budget:
                break
            ranked = sorted(range(first, len(nodes)), key=lambda index: -nodes[index].path)
            frontier = [index for index in ranked[: shape.frontier] if nodes[index].path >= self._expand_threshold]
            if not frontier:
                break
            outputs = self._feed(nodes, frontier, entry, produced, base, count)
        return nodes

    def _top_children(self, logits: torch.Tensor, frontier: list[int], nodes: list[_Node], depth: int,
                      room: int) -> list[_Node]:
        """The `top_k` likeliest children of every frontier node (row r of `logits` `[F, Vd]`
        drafts below `frontier[r]`), in frontier order, at most `room` in all. One softmax and
        top-k over the whole level, copied to the host once: on a GPU, a copy per node would wait
        for the device each time. The row where `room` runs out takes its own smaller top-k, so
        that ties break as a top-k of that size does."""
        k = min(self.shape.top_k, logits.shape[-1])
        if k < 1 or room < 1:
            return []
        probs = torch.softmax(logits, dim=-1)
        top = probs.topk(k, dim=-1)
        chances, rows = top.values.tolist(), top.indices.tolist()
        ids = self._draft_token_ids()
        children: list[_Node] = []
        for row, parent in enumerate(frontier):
            left = room - len(children)
            if left < 1:
                break
            row_chances, row_indices = chances[row], rows[row]
            if left < k:
                last = probs[row].topk(left)
                row_chances, row_indices = last.values.tolist(), last.indices.tolist()
            path = 1.0 if parent < 0 else nodes[parent].path
            children.extend(_Node(ids[index], parent, depth, chance, path * chance)
                            for chance, index in zip(row_chances, row_indices))
        return children

    def _draft_token_ids(self) -> list[int]:
        """The target token id of each draft vocabulary row, as a host list (refreshed when the
        model's map is replaced or changed in place)."""
        draft_ids = self.model.draft_ids
        if self._ids_source is not draft_ids or self._ids_version != draft_ids._version:
            self._ids_source, self._ids_version, self._ids = draft_ids, draft_ids._version, draft_ids.tolist()
        return self._ids

    def _drawn_children(self, logits: torch.Tensor, parent: int, depth: int, path: float, context: DraftContext,
                        room: int) -> list[_Node]:
        """Children of one node drawn without replacement from the draft's warped distribution
        `logits` `[Vd]`, each with its exact q; how many is decided before drawing."""
        ids = self.model.draft_ids
        k = min(self.shape.top_k, logits.shape[-1], room)
        if k < 1:
            return []
        params = context.params
        q = warp_logits(logits, params)  # [Vd]
        # as many children as have a chance worth their verification, decided before drawing
        best = q.topk(k).values.tolist()
        wanted = max(1, sum(1 for value in best if path * value >= self._expand_threshold))
        children = []
        for _ in range(wanted):
            if float(q.sum()) <= 0:
                break
            row = context.rng.categorical(q)
            chance = float(q[row])
            wide = q.new_zeros(self.model.config.vocab_size).index_copy_(0, ids.to(q.device), q)
            children.append(_Node(int(ids[row]), parent, depth, chance, path * chance, wide))
            q = q.clone()
            q[row] = 0.0
            total = q.sum()
            q = q / total if total > 0 else q
        return children

    def _feed(self, nodes: list[_Node], frontier: list[int], entry: dict[int, int],
              produced: dict[int, torch.Tensor], base: int, count: int) -> torch.Tensor:
        """One batched forward over the frontier nodes; each sees the committed entries, its
        ancestors' entries and its own. Returns their outputs `[len(frontier), H]`."""
        device = self.device
        first = base + len(entry)
        for offset, node in enumerate(frontier):
            entry[node] = first + offset
        span = first + len(frontier)
        visible = torch.zeros(len(frontier), span, dtype=torch.bool)
        visible[:, :base] = True
        for row, node in enumerate(frontier):
            walk = node
            while walk >= 0:
                visible[row, entry[walk]] = True
                walk = nodes[walk].parent
        depth = nodes[frontier[0]].depth
        positions = torch.full((1, len(frontier)), count - 2 + depth, device=device)
        ids = torch.tensor([[nodes[node].token for node in frontier]], device=device)
        hidden = torch.stack([produced[nodes[node].parent] for node in frontier])[None]
        slots = torch.arange(first, span, device=device)
        output = self.model(ids, hidden, positions, self.cache.attention(slots, visible.to(device)))[0]
        for row, node in enumerate(frontier):
            produced[node] = output[row]
        return output
