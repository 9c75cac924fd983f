"""Trees: layout as draft nodes, validation, and the accuracy-driven construction."""

import itertools

import pytest

from specdec_plugin_medusa import MedusaParams, choose_tree
from specdec_plugin_medusa.trees import TreeLayout, chain, check_paths, derive_tree, expected_accepted_tokens


def test_layout_matches_the_medusa_worked_example():
    # algorithms.md §2.2: choices [[0],[1],[0,0],[0,1],[1,0]]
    layout = TreeLayout.from_paths([[1, 0], [0], [0, 1], [1], [0, 0]])
    assert layout.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0))
    assert layout.parents == (-1, -1, 0, 0, 1)
    assert layout.heads == (0, 0, 1, 1, 1)
    assert layout.ranks == (0, 1, 0, 1, 0)
    assert (layout.depth, layout.top_k, layout.num_nodes) == (2, 2, 5)
    assert layout.truncated(1).paths == ((0,), (1,))


@pytest.mark.parametrize("paths, message", [
    ([[0], [0, 0, 0]], r"needs its prefix \[0, 0\]"),
    ([[0], [0]], "twice"),
    ([[]], "at least one rank"),
    ([[-1]], "negative"),
])
def test_malformed_trees_are_refused(paths, message):
    with pytest.raises(ValueError, match=message):
        check_paths(paths)


def test_a_tree_deeper_than_the_heads_is_refused():
    with pytest.raises(ValueError, match="only 2 heads"):
        check_paths(chain(3), num_heads=2)


ACCURACY = [[0.6, 0.15, 0.08, 0.04], [0.4, 0.15, 0.07, 0.05], [0.3, 0.1, 0.05, 0.03]]


def all_trees(max_nodes, accuracy):
    """Every prefix-closed tree over the rank/depth grid with at most max_nodes nodes (brute force)."""
    grid = [path for depth in range(1, len(accuracy) + 1)
            for path in itertools.product(range(len(accuracy[0])), repeat=depth)]
    for size in range(1, max_nodes + 1):
        for combo in itertools.combinations(grid, size):
            chosen = set(combo)
            if all(len(path) == 1 or path[:-1] in chosen for path in chosen):
                yield [list(path) for path in combo]


@pytest.mark.parametrize("budget", [1, 2, 3, 4])
def test_derived_trees_maximise_the_expected_accepted_length(budget):
    tree = derive_tree(ACCURACY, budget)
    assert len(tree) == budget
    check_paths(tree)
    best = max(expected_accepted_tokens(candidate, ACCURACY) for candidate in all_trees(budget, ACCURACY)
               if len(candidate) == budget)
    assert expected_accepted_tokens(tree, ACCURACY) == pytest.approx(best)


def test_derived_trees_grow_best_first_and_respect_max_depth():
    assert derive_tree(ACCURACY, 4) == [[0], [0, 0], [1], [0, 1]]  # 0.6, 0.24, 0.15, 0.09 > 0.072
    assert derive_tree(ACCURACY, 4, max_depth=1) == [[0], [1], [2], [3]]
    assert expected_accepted_tokens([[0], [0, 0]], ACCURACY) == pytest.approx(1 + 0.6 + 0.24)


def test_derive_tree_copes_with_ranks_whose_accuracy_is_not_sorted():
    accuracy = [[0.2, 0.5]]
    assert derive_tree(accuracy, 1) == [[1]]


def test_params_pick_the_tree():
    per_rank, recommended = ACCURACY, [[0], [1]]
    assert choose_tree(MedusaParams(), 3, recommended, per_rank) == recommended
    assert choose_tree(MedusaParams(num_nodes=3), 3, recommended, per_rank) == derive_tree(per_rank, 3)
    assert choose_tree(MedusaParams(tree="chain"), 3, None, None) == chain(3)
    assert choose_tree(MedusaParams(tree="chain", max_depth=2), 3, None, None) == chain(2)
    assert choose_tree(MedusaParams(tree=[[0], [0, 1]]), 3, None, None) == [[0], [0, 1]]
    assert choose_tree(MedusaParams(), 3, None, None) == chain(3)  # untrained heads: the plain chain
    with pytest.raises(ValueError, match="record no accuracy"):
        choose_tree(MedusaParams(num_nodes=4), 3, None, None)
    with pytest.raises(ValueError, match="only 3 heads"):
        choose_tree(MedusaParams(tree=chain(4)), 3, None, None)
