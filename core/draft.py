"""The one data contract between drafters, the verifier and acceptance policies: `Draft`.

A draft is a token tree hanging below the *root*, the last committed token (already decided,
not yet seen by the target). A chain is the tree where every node has at most one child.

Vocabulary used throughout specdec:
- node `i` (0-based) is `tokens[i]`; `parents[i]` is its parent node, or -1 for a child of the
  root. Parents precede children (`parents[i] < i`), which rules out cycles.
- row: logits and probabilities are indexed by row, `row(root) = 0`, `row(node i) = i + 1`. The
  target's logits at row r give the distribution of the children of that row's node.
- depth: the root has depth 0, its children depth 1, and so on. Node i sits at position
  `position(root) + depth[i]`.
- path: the accepted nodes, each a child of the previous one, starting below the root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Sequence

import torch

from specdec.errors import DraftError


def tree_depths(parents: Sequence[int]) -> tuple[int, ...]:
    """Depth of every node of a tree given in topological order (children of the root: depth 1)."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return tuple(depths)


def tree_children(parents: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """`children[row]`: the nodes below row `row` (row 0 = root, row i + 1 = node i), in node order."""
    children: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for node, parent in enumerate(parents):
        children[parent + 1].append(node)
    return tuple(tuple(nodes) for nodes in children)


def subtree_parents(parents: Sequence[int], nodes: Sequence[int]) -> tuple[int, ...]:
    """The parents of `nodes` renumbered by their position in `nodes` (-1 stays the root).

    :raises DraftError: when a node's parent is not among the earlier `nodes`.
    """
    position: dict[int, int] = {}
    renumbered = []
    for index, node in enumerate(nodes):
        parent = parents[node]
        if parent >= 0 and parent not in position:
            raise DraftError(f"node {node} is kept without its parent {parent} (or after it)")
        renumbered.append(-1 if parent < 0 else position[parent])
        position[node] = index
    return tuple(renumbered)


def breadth_first(parents: Sequence[int], key=None) -> list[int]:
    """The nodes of a tree level by level, siblings in node order or, with `key`, sorted by
    `key(node)` (stable: ties keep node order)."""
    children = [list(row) for row in tree_children(parents)]
    if key is not None:
        for row in children:
            row.sort(key=key)
    order: list[int] = []
    frontier = children[0]
    while frontier:
        order.extend(frontier)
        frontier = [child for node in frontier for child in children[node + 1]]
    return order


def merge_trees(trees: Iterable[tuple[Sequence[int], Sequence[int]]]
                ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Merge token trees into one trie: the same token under the same parent is one node.

    Each tree is `(tokens, parents)` in topological order (parents before children, -1 = the
    root). Nodes are numbered by first appearance, tree by tree, so parents precede children and
    the first tree's nodes keep their order.

    :returns: `(tokens, parents, index)`, where `index[tree][node]` is the merged node of that
        tree's node.
    """
    found: dict[tuple[int, int], int] = {}  # (merged parent, token) -> merged node
    tokens: list[int] = []
    parents: list[int] = []
    index: list[tuple[int, ...]] = []
    for tree_tokens, tree_parents in trees:
        merged: list[int] = []
        for token, parent in zip(tree_tokens, tree_parents, strict=True):
            if not -1 <= parent < len(merged):
                raise DraftError(f"node {len(merged)} of tree {len(index)} has parent {parent}; parents "
                                 f"must be -1 (the root) or an earlier node")
            key = (-1 if parent < 0 else merged[parent], int(token))
            node = found.get(key)
            if node is None:
                node = found[key] = len(tokens)
                tokens.append(key[1])
                parents.append(key[0])
            merged.append(node)
        index.append(tuple(merged))
    return tuple(tokens), tuple(parents), tuple(index)


def merge_sequences(sequences: Iterable[Sequence[int]]
                    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Merge token sequences into a trie, nodes numbered by first appearance (`merge_trees` of
    chains).

    :returns: `(tokens, parents, members)`, where `members[node]` lists the indices of the
        sequences that pass through the node (its support).
    """
    sequences = [list(sequence) for sequence in sequences]
    tokens, parents, index = merge_trees((sequence, range(-1, len(sequence) - 1)) for sequence in sequences)
    members: list[list[int]] = [[] for _ in tokens]
    for number, nodes in enumerate(index):
        for node in nodes:
            members[node].append(number)
    return tokens, parents, tuple(tuple(row) for row in members)


@dataclass(frozen=True, eq=False)
class AuxTokens:
    """Extra rows that ride along in the verification forward without being candidates.

    Lookahead decoding uses them for its Jacobi window: they get their own positions and
    attention rows, their logits come back to the drafter (`StepOutcome.aux_logits`), and their
    KV entries are never kept. Every aux row sees all committed tokens (root included).
    """

    tokens: torch.Tensor  # [A] int64
    position_offsets: torch.Tensor  # [A] int64, >= 1: position relative to the root
    attends_to: torch.Tensor  # [A, T + A] bool: which draft nodes, then which aux rows, each row sees

    def __post_init__(self) -> None:
        count = self.tokens.shape[0] if self.tokens.dim() == 1 else -1
        if count < 0 or self.position_offsets.shape != (count,):
            raise DraftError("aux tokens and position_offsets must be 1-D tensors of equal length")
        if self.attends_to.dim() != 2 or self.attends_to.shape[0] != count:
            raise DraftError("aux attends_to must have one row per aux token")
        if count and int(self.position_offsets.min()) < 1:
            raise DraftError("aux position offsets must be >= 1 (the root is offset 0)")


@dataclass(frozen=True, eq=False)
class Draft:
    """A token tree proposed by a drafter for one verification pass.

    :param tokens: `[T]` int64 token ids, parents before children; a list of ints is converted
        (on the CPU; pass a tensor to keep drafts on the device).
    :param parents: length-T parent node indices (-1 = child of the root); a list is converted.
    :param q: `[T, V]` float32 or None. Row i is the exact distribution `tokens[i]` was drawn
        from, given its ancestors and its earlier siblings (for children drawn without
        replacement, the parent's distribution with earlier siblings removed and renormalized).
        None means every node is deterministic (argmax, top-k, n-gram, retrieval): a point mass.
    :param aux: extra verification rows that are not candidates (see `AuxTokens`).
    :param confidence: length-T floats in [0, 1] or None: the drafter's estimate that node i is
        accepted given that its parent is (the root always is). Advisory only: verification never
        reads it, so a wrong estimate costs speed, never losslessness. Composite drafters
        (`merge`) use it to weigh nodes from several drafters; without it they learn an estimate.
    """

    tokens: torch.Tensor
    parents: tuple[int, ...]
    q: torch.Tensor | None = None
    aux: AuxTokens | None = None
    confidence: tuple[float, ...] | None = None
    #: the draft this one was cut from (`subtree`, `truncated`), None for an original; see `derives_from`
    origin: "Draft | None" = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # like `Draft.chain`, accept plain Python sequences: Draft([5, 7], [-1, 0])
        if not isinstance(self.tokens, torch.Tensor):
            object.__setattr__(self, "tokens", torch.as_tensor(list(self.tokens), dtype=torch.long))
        if not isinstance(self.parents, tuple):
            object.__setattr__(self, "parents", tuple(self.parents))
        if self.tokens.dim() != 1 or self.tokens.dtype not in (torch.int64, torch.int32):
            raise DraftError(f"draft tokens must be a 1-D integer tensor, got shape "
                             f"{tuple(self.tokens.shape)} and dtype {self.tokens.dtype}")
        count = self.tokens.shape[0]
        if len(self.parents) != count:
            raise DraftError(f"draft has {count} tokens but {len(self.parents)} parent indices")
        for node, parent in enumerate(self.parents):
            if not -1 <= parent < node:
                raise DraftError(
                    f"malformed draft tree: node {node} has parent {parent}; parents must be -1 "
                    f"(the root) or an earlier node (0..{node - 1}), which also rules out cycles")
        if self.q is not None and (self.q.dim() != 2 or self.q.shape[0] != count):
            raise DraftError(f"draft q must have shape [{count}, vocab], got {tuple(self.q.shape)}")
        if self.aux is not None and self.aux.attends_to.shape[1] != count + self.aux.tokens.shape[0]:
            raise DraftError("aux attends_to must have T + A columns (draft nodes, then aux rows)")
        if self.confidence is not None:
            confidence = tuple(float(value) for value in self.confidence)
            if len(confidence) != count:
                raise DraftError(f"draft has {count} tokens but {len(confidence)} confidence values")
            bad = [value for value in confidence if not 0.0 <= value <= 1.0]  # NaN fails too
            if bad:
                raise DraftError(f"draft confidence values are probabilities in [0, 1], got {bad[0]}")
            object.__setattr__(self, "confidence", confidence)

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def empty(cls) -> "Draft":
        return cls(torch.empty(0, dtype=torch.long), ())

    @classmethod
    def chain(cls, tokens: Sequence[int] | torch.Tensor, q: torch.Tensor | None = None) -> "Draft":
        """A linear draft: token i is the child of token i-1."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        return cls(tokens, tuple(range(-1, tokens.shape[0] - 1)), q)

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[int]]) -> "Draft":
        """Merge candidate continuations into a deterministic trie (shared prefixes share nodes).

        Nodes are numbered breadth-first; siblings keep the order in which they first appear, so
        put the most promising sequence first.
        """
        tokens, parents, _ = merge_sequences(sequences)
        trie = cls(torch.tensor(tokens, dtype=torch.long), parents)
        return trie.subtree(breadth_first(parents))

    # -- derived structure --------------------------------------------------------------------

    @property
    def num_nodes(self) -> int:
        """Nodes in the tree: the draft tokens a verification checks (`GenerationStats.draft_tokens`)."""
        return self.tokens.shape[0]

    def path_tokens(self, path: Sequence[int]) -> tuple[int, ...]:
        """The tokens of the nodes on `path` (node indices, root side first)."""
        return tuple(self.tokens[list(path)].tolist()) if len(path) else ()

    @property
    def num_aux(self) -> int:
        return 0 if self.aux is None else self.aux.tokens.shape[0]

    @cached_property
    def depths(self) -> tuple[int, ...]:
        """Depth of every node (children of the root have depth 1)."""
        return tree_depths(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depths, default=0)

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """`children[row]`: the nodes below row `row` (row 0 = root, row i + 1 = node i), in draft order."""
        return tree_children(self.parents)

    @cached_property
    def is_chain(self) -> bool:
        return all(parent == node - 1 for node, parent in enumerate(self.parents))

    def ancestor_mask(self) -> torch.Tensor:
        """`[T, T]` bool: entry (i, j) is True when node j is node i or one of its ancestors.

        This is the tree attention pattern among draft nodes; every node also sees the root and
        all committed tokens.
        """
        count = self.num_nodes
        mask = torch.eye(count, dtype=torch.bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                mask[node] |= mask[parent]
        return mask

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root's child down to `node`."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def truncated(self, max_depth: int) -> "Draft":
        """The same draft without nodes deeper than `max_depth`; aux rows stay, minus their
        attention to the dropped nodes."""
        if self.max_depth <= max_depth:
            return self
        return self.subtree([node for node, depth in enumerate(self.depths) if depth <= max_depth])

    def subtree(self, nodes: Sequence[int]) -> "Draft":
        """The draft made of `nodes`, renumbered in the order given: each node's parent must be
        among them, earlier. Drafters use it to keep the nodes worth verifying out of a candidate
        pool, or to reorder a tree; q rows and confidence values follow their nodes (so keep sibling groups whole and
        in order when q describes draws without replacement), aux rows stay, minus their
        attention to the dropped nodes."""
        parents = subtree_parents(self.parents, nodes)
        index = torch.tensor(list(nodes), dtype=torch.long)
        q = None if self.q is None else self.q[index.to(self.q.device)]
        aux = None
        if self.aux is not None:
            columns = torch.cat([index, torch.arange(self.num_nodes, self.num_nodes + self.num_aux)])
            aux = AuxTokens(self.aux.tokens, self.aux.position_offsets,
                            self.aux.attends_to[:, columns.to(self.aux.attends_to.device)])
        confidence = None if self.confidence is None else tuple(self.confidence[node] for node in nodes)
        return Draft(self.tokens[index.to(self.tokens.device)], parents, q, aux, confidence,
                     origin=self.origin or self)

    def derives_from(self, draft: "Draft") -> bool:
        """Whether this draft is `draft` or was cut from it. The engine may cut a drafter's draft
        (deeper or larger than the step's budget) before verifying it, so a drafter recognises its
        own draft in `StepOutcome.draft` with `outcome.draft.derives_from(my_draft)`; the accepted
        `path` indexes `outcome.draft`, the cut one (a node-count cut keeps a prefix of the nodes)."""
        return self is draft or self.origin is draft
