"""Candidate trees: every continuation a lookup found, merged into a trie with support counts.

Both drafters turn their matches into a `CandidateTree`; `adaptive.select_nodes` then decides which
of its nodes are worth verifying and `CandidateTree.draft` turns that choice into a `specdec.Draft`.

Vocabulary (as in `specdec.draft`): node i is `tokens[i]`, `parents[i]` is its parent node or -1
for a child of the root; parents come before children, and siblings are stored best-first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch

from specdec import Draft, tree_children, tree_depths


@dataclass(frozen=True, eq=False)
class CandidateTree:
    """Continuations of one lookup, merged into a trie.

    :param tokens: token of each node.
    :param parents: parent node of each node (-1 = child of the root), parents first.
    :param counts: occurrences whose continuation passes through each node.
    :param root_count: occurrences behind the whole tree (the children's parent count).
    :param matched: for each node, the longest stretch of context tokens (before the root) that
        an occurrence supporting the node matched.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    counts: tuple[int, ...]
    root_count: int
    matched: tuple[int, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.tokens)

    @cached_property
    def depths(self) -> tuple[int, ...]:
        return tree_depths(self.parents)

    @cached_property
    def children(self) -> tuple[tuple[int, ...], ...]:
        """`children[row]`: nodes below row `row` (row 0 = root, row i + 1 = node i), best first."""
        return tree_children(self.parents)

    def parent_count(self, node: int) -> int:
        parent = self.parents[node]
        return self.root_count if parent < 0 else self.counts[parent]

    def draft(self, nodes: Sequence[int]) -> Draft:
        """The draft made of `nodes` (each node's parent must be among them, and come earlier)."""
        if not nodes:
            return Draft.empty()
        new_index = {node: index for index, node in enumerate(nodes)}
        parents = tuple(-1 if self.parents[node] < 0 else new_index[self.parents[node]] for node in nodes)
        return Draft(torch.tensor([self.tokens[node] for node in nodes], dtype=torch.long), parents)


def trie_from_sequences(sequences: Sequence[Sequence[int]], matched: Sequence[int], *,
                        by_count: bool, root_count: int | None = None) -> CandidateTree:
    """Merge continuations into a `CandidateTree`.

    Siblings are ordered by support count (ties: first appearance) when `by_count`, else by first
    appearance alone, so pass the sequences best-first (for example most recent first).

    :param matched: context tokens matched by the occurrence behind each sequence.
    :param root_count: occurrences behind the tree (default: the number of sequences).
    """
    index: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    tokens: list[int] = []
    parents: list[int] = []
    counts: list[int] = []
    longest: list[int] = []
    for sequence, length in zip(sequences, matched, strict=True):
        parent = -1
        for token in sequence:
            key = (parent, int(token))
            node = index.get(key)
            if node is None:
                node = index[key] = len(tokens)
                tokens.append(int(token))
                parents.append(parent)
                counts.append(0)
                longest.append(0)
            counts[node] += 1
            longest[node] = max(longest[node], length)
            parent = node
    # renumber breadth-first with siblings best-first (insertion order is first appearance)
    children: list[list[int]] = [[] for _ in range(len(tokens) + 1)]
    for node, parent in enumerate(parents):
        children[parent + 1].append(node)
    if by_count:
        for row in children:
            row.sort(key=lambda node: -counts[node])  # stable: ties keep first appearance
    order: list[int] = []
    frontier = children[0]
    while frontier:
        order.extend(frontier)
        frontier = [child for node in frontier for child in children[node + 1]]
    new_index = {node: position for position, node in enumerate(order)}
    return CandidateTree(
        tokens=tuple(tokens[node] for node in order),
        parents=tuple(-1 if parents[node] < 0 else new_index[parents[node]] for node in order),
        counts=tuple(counts[node] for node in order),
        root_count=len(sequences) if root_count is None else root_count,
        matched=tuple(longest[node] for node in order))
