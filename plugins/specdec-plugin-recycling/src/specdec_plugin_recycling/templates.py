"""Draft-tree templates of Token Recycling: which candidates of which rows a step may draft.

A template is a list of paths of ranks, as Medusa's trees are: `[0]` is the best candidate in the
root token's row of the adjacency table, `[0, 1]` the second-best candidate in the row of that
token, and so on. Every proper prefix of a path is a path too. Unlike Medusa's, a node's token
depends on its parent's token (the walk reads the parent token's row), so the template is a
breadth-first search pattern, not a Cartesian product of fixed lists.

`PAPER_TREE` is the template of the reference implementation (Luowaterbi/TokenRecycling,
`model/recycling/tree_template_.py`, version "2.2.2", the default of its evaluation script):
80 nodes over 6 levels (8, 21, 25, 15, 8, 3 nodes), all ranks below 8 (the table keeps the top 8
per token). Its paths are facts of that repository, written out here level by level.

This module is torch-free: the plugin's parameter model validates templates with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from specdec import check_tree_paths, tree_from_paths

Paths = list[list[int]]


def _level(*groups: tuple[tuple[int, ...], Sequence[int]]) -> Paths:
    """Paths `prefix + [rank]` for each (prefix, ranks) group, in order."""
    return [list(prefix) + [rank] for prefix, ranks in groups for rank in ranks]


#: The paper's tree: 80 nodes, 6 levels, ranks 0-7 (see the module docstring).
PAPER_TREE: Paths = (
    _level(((), range(8)))
    + _level(((0,), range(8)), ((1,), range(4)), ((2,), range(3)), ((3,), range(2)),
             ((4,), [0]), ((5,), [0]), ((6,), [0]), ((7,), [0]))
    + _level(((0, 0), range(8)), ((0, 1), range(3)), ((0, 2), range(2)), ((0, 3), [0]), ((0, 4), [0]),
             ((0, 5), [0]), ((0, 6), [0]), ((0, 7), [0]), ((1, 0), range(2)), ((1, 1), [0]),
             ((2, 0), [0]), ((3, 0), [0]), ((4, 0), [0]), ((5, 0), [0]))
    + _level(((0, 0, 0), range(5)), ((0, 0, 1), range(2)), ((0, 0, 2), [0]), ((0, 0, 3), [0]),
             ((0, 0, 4), [0]), ((0, 1, 0), [0]), ((0, 2, 0), [0]), ((1, 0, 0), [0]), ((2, 0, 0), [0]),
             ((3, 0, 0), [0]))
    + _level(((0, 0, 0, 0), range(3)), ((0, 0, 0, 1), [0]), ((0, 0, 0, 2), [0]), ((0, 0, 1, 0), [0]),
             ((0, 1, 0, 0), [0]), ((1, 0, 0, 0), [0]))
    + _level(((0, 0, 0, 0, 0), range(2)), ((0, 0, 0, 1, 0), [0]))
)

#: Named templates a pipeline file may ask for.
TEMPLATES: dict[str, Paths] = {"paper": PAPER_TREE}


def check_paths(paths: Sequence[Sequence[int]], *, top_k: int | None = None) -> Paths:
    """Validate a template: non-empty, a valid tree of paths (`specdec.check_tree_paths`), ranks
    below top_k.

    :raises ValueError: naming the offending path.
    """
    tree = check_tree_paths(paths)
    if not tree:
        raise ValueError("the tree lists no path; give at least [[0]]")
    for path in tree:
        if top_k is not None and max(path) >= top_k:
            raise ValueError(f"path {path} uses rank {max(path)}, but the table keeps only the top {top_k} "
                             f"candidates per token (ranks 0-{top_k - 1}); raise top_k or drop the path")
    return tree


@dataclass(frozen=True)
class TreeTemplate:
    """A template as draft nodes: breadth-first, siblings by rank (`parents` as in `specdec.Draft`)."""

    paths: tuple[tuple[int, ...], ...]  # node i's path of ranks
    parents: tuple[int, ...]  # -1 = child of the root; parents come first
    ranks: tuple[int, ...]  # node i is candidate ranks[i] of its parent's row

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]]) -> "TreeTemplate":
        tree = tree_from_paths(check_paths(paths))
        return cls(tree.paths, tree.parents, tree.ranks)

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max(len(path) for path in self.paths)

    @property
    def top_k(self) -> int:
        """How many candidates per row the template reads."""
        return max(self.ranks) + 1
