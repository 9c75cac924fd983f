"""Medusa token trees: paths of ranks, their layout as a `Draft`, and deriving one from accuracy.

A tree is a list of paths ("Medusa choices"); a path lists the rank chosen at each depth, so
`[0, 1]` is "head 0's best token, then head 1's second-best token". Every proper prefix of a
path must be a path too. Because all heads read the same hidden state (the one at the last
accepted position), a node's token depends only on its depth and rank: the tree is a pruned
Cartesian product of the heads' top-k lists.

Deriving a tree (`derive_tree`, Medusa's and Sequoia's idea). Let `a[h][r]` be the measured
probability that head h's rank-r token is the right one (held-out data). Treating depths as
independent, the probability that a path `[r1, ..., rd]` is accepted in full is
`a[0][r1] * ... * a[d-1][rd]`, and the expected number of tokens one step commits is
`1 + sum over nodes of that probability` (the 1 is the target's own token). A child's value never
exceeds its parent's, so the `n` most valuable paths always form a valid tree and maximise the
expectation among trees of `n` nodes; `derive_tree` enumerates them best-first with a heap.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

from specdec import check_tree_paths, tree_from_paths

Paths = list[list[int]]


def check_paths(paths: Sequence[Sequence[int]], *, num_heads: int | None = None) -> Paths:
    """Validate a tree: a valid tree of paths (`specdec.check_tree_paths`), not deeper than the heads."""
    tree = check_tree_paths(paths)
    for path in tree:
        if num_heads is not None and len(path) > num_heads:
            raise ValueError(f"path {path} is {len(path)} deep but there are only {num_heads} heads")
    return tree


def chain(depth: int) -> Paths:
    """The top-1 chain `[[0], [0, 0], ...]`."""
    return [[0] * length for length in range(1, depth + 1)]


@dataclass(frozen=True)
class TreeLayout:
    """A tree as draft nodes: breadth-first, siblings by rank (`parents` as in `specdec.Draft`)."""

    paths: tuple[tuple[int, ...], ...]  # node i's path
    parents: tuple[int, ...]  # -1 = child of the root
    heads: tuple[int, ...]  # node i's token is heads[i]'s ...
    ranks: tuple[int, ...]  # ... ranks[i]-th most likely token

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]]) -> "TreeLayout":
        tree = tree_from_paths(paths)
        return cls(tree.paths, tree.parents, tuple(depth - 1 for depth in tree.depths), tree.ranks)

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max((len(path) for path in self.paths), default=0)

    @property
    def top_k(self) -> int:
        """How many candidates per head the tree uses."""
        return max(self.ranks, default=-1) + 1

    def truncated(self, max_depth: int) -> "TreeLayout":
        return TreeLayout.from_paths([path for path in self.paths if len(path) <= max_depth])


def expected_accepted_tokens(paths: Sequence[Sequence[int]], accuracy: Sequence[Sequence[float]]) -> float:
    """Expected tokens per step (target token included) under the independence model above.

    :param accuracy: `accuracy[h][r]` = probability that head h's rank-r token is right.
    """
    total = 1.0
    for path in paths:
        total += _path_value(path, accuracy)
    return total


def derive_tree(accuracy: Sequence[Sequence[float]], num_nodes: int, max_depth: int | None = None) -> Paths:
    """The `num_nodes`-node tree with the largest expected accepted length (see module docstring).

    :param accuracy: `accuracy[h][r]` per head h and rank r (measured on held-out data).
    :param max_depth: deepest allowed path (default: one per head).
    :returns: paths, most valuable first.
    """
    if num_nodes < 1:
        raise ValueError("a tree needs at least one node")
    depth_limit = len(accuracy) if max_depth is None else min(max_depth, len(accuracy))
    if depth_limit < 1 or not accuracy[0]:
        raise ValueError("need the accuracy of at least one head")
    # Best-first over the tree of all paths: a popped path's children join the frontier. A
    # child is never worth more than its parent, so paths pop in order of value (ties in
    # lexicographic order), and the first `num_nodes` popped are the best prefix-closed set.
    frontier = [(-_path_value((rank,), accuracy), (rank,)) for rank in range(len(accuracy[0]))]
    heapq.heapify(frontier)
    tree: Paths = []
    while frontier and len(tree) < num_nodes:
        _, path = heapq.heappop(frontier)
        tree.append(list(path))
        if len(path) < depth_limit:
            for rank in range(len(accuracy[len(path)])):
                child = path + (rank,)
                heapq.heappush(frontier, (-_path_value(child, accuracy), child))
    return tree


def _path_value(path: Sequence[int], accuracy: Sequence[Sequence[float]]) -> float:
    value = 1.0
    for head, rank in enumerate(path):
        value *= float(accuracy[head][rank]) if rank < len(accuracy[head]) else 0.0
    return value
