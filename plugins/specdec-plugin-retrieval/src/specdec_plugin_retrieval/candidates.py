"""Candidate trees: every continuation a lookup found, merged into a trie with support counts.

Both drafters turn their matches into a `CandidateTree`; `specdec.select_nodes` then decides which
of its nodes are worth verifying and `CandidateTree.draft` turns that choice into a `specdec.Draft`.

Vocabulary (as in `specdec.draft`): node i is `tokens[i]`, `parents[i]` is its parent node or -1
for a child of the root; parents come before children, and siblings are stored best-first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch

from specdec import Draft, breadth_first, merge_sequences, subtree_parents, tree_children, tree_depths


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
        return Draft(torch.tensor(self.tokens, dtype=torch.long), self.parents).subtree(nodes)


def trie_from_sequences(sequences: Sequence[Sequence[int]], matched: Sequence[int], *,
                        by_count: bool, root_count: int | None = None) -> CandidateTree:
    """Merge continuations into a `CandidateTree`.

    Siblings are ordered by support count (ties: first appearance) when `by_count`, else by first
    appearance alone, so pass the sequences best-first (for example most recent first).

    :param matched: context tokens matched by the occurrence behind each sequence.
    :param root_count: occurrences behind the tree (default: the number of sequences).
    """
    tokens, parents, members = merge_sequences(sequences)
    if len(matched) != len(sequences):
        raise ValueError(f"{len(sequences)} sequences but {len(matched)} matched lengths")
    counts = [len(row) for row in members]
    # breadth-first with siblings best-first (node numbers are first appearance)
    order = breadth_first(parents, key=(lambda node: -counts[node]) if by_count else None)
    return CandidateTree(
        tokens=tuple(tokens[node] for node in order),
        parents=subtree_parents(parents, order),
        counts=tuple(counts[node] for node in order),
        root_count=len(sequences) if root_count is None else root_count,
        matched=tuple(max(matched[number] for number in members[node]) for node in order))
