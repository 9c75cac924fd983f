"""Token trees written as paths of child ranks, and their layout as draft nodes.

Tree drafters with a fixed shape (Medusa's "choices", Token Recycling's templates) write the
tree as a list of paths: `[0, 1]` is "the best candidate below the root, then the second-best
candidate below that". Every proper prefix of a path is a path too (the list is prefix-closed),
so the paths are exactly the tree's nodes.

This module is torch-free, unlike `specdec.draft`: plugin parameter models validate their trees
with it, and `specdec plugins` and `specdec validate` run without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def check_tree_paths(paths: Sequence[Sequence[int]]) -> list[list[int]]:
    """Validate a tree given as paths of child ranks: no path twice, every path at least one
    rank long, ranks >= 0, every proper prefix of a path listed too. An empty list is a valid,
    empty tree.

    :returns: the paths as lists of ints, in the given order.
    :raises ValueError: naming the offending path.
    """
    tree = [[int(rank) for rank in path] for path in paths]
    seen = {tuple(path) for path in tree}
    if len(seen) != len(tree):
        raise ValueError("the tree lists a path twice")
    for path in tree:
        if not path:
            raise ValueError("a tree path must list at least one rank")
        if min(path) < 0:
            raise ValueError(f"path {path} has a negative rank")
        if len(path) > 1 and tuple(path[:-1]) not in seen:
            raise ValueError(f"path {path} needs its prefix {path[:-1]} in the tree too")
    return tree


@dataclass(frozen=True)
class PathTree:
    """A tree of rank paths as draft nodes (`parents` and depths as in `specdec.Draft`)."""

    paths: tuple[tuple[int, ...], ...]  # node i's path of ranks
    parents: tuple[int, ...]  # -1 = child of the root; parents come first
    depths: tuple[int, ...]  # len(paths[i]): children of the root have depth 1
    ranks: tuple[int, ...]  # node i is its parent's ranks[i]-th candidate (paths[i][-1])


def tree_from_paths(paths: Sequence[Sequence[int]]) -> PathTree:
    """Validate paths (`check_tree_paths`) and number them breadth-first, siblings by rank: the
    same tree always gets the same node numbers, whatever order its paths were listed in.

    :raises ValueError: as `check_tree_paths`.
    """
    ordered = sorted((tuple(path) for path in check_tree_paths(paths)), key=lambda path: (len(path), path))
    index = {path: node for node, path in enumerate(ordered)}
    return PathTree(paths=tuple(ordered),
                    parents=tuple(index[path[:-1]] if len(path) > 1 else -1 for path in ordered),
                    depths=tuple(len(path) for path in ordered),
                    ranks=tuple(path[-1] for path in ordered))
