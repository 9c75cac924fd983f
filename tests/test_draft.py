"""The Draft contract: tree validation, derived structure, constructors."""

import pytest
import torch

from specdec import AuxTokens, Draft, DraftError, check_tree_paths, tree_from_paths, tree_depths
from specdec.draft import breadth_first, merge_sequences


def test_chain_structure():
    draft = Draft.chain([5, 6, 7])
    assert draft.parents == (-1, 0, 1)
    assert draft.depths == (1, 2, 3) and draft.max_depth == 3 and draft.is_chain
    assert draft.children == ((0,), (1,), (2,), ())
    assert torch.equal(draft.ancestor_mask(), torch.ones(3, 3, dtype=torch.bool).tril())


def test_tree_structure_and_mask():
    # root -> a(0), b(1); a -> c(2), d(3); d -> e(4)
    draft = Draft(torch.tensor([10, 11, 12, 13, 14]), (-1, -1, 0, 0, 3))
    assert draft.depths == (1, 1, 2, 2, 3)
    assert draft.children[0] == (0, 1) and draft.children[1] == (2, 3) and draft.children[4] == (4,)
    assert not draft.is_chain
    assert draft.path_to(4) == [0, 3, 4]
    mask = draft.ancestor_mask()
    assert mask[4].tolist() == [True, False, False, True, True]
    assert mask[1].tolist() == [False, True, False, False, False]


@pytest.mark.parametrize("parents, message", [
    ((0, -1), "parent 0"),  # a node cannot be its own parent
    ((-1, 2, 1), "parent 2"),  # forward reference: would allow a cycle 1 -> 2 -> 1
    ((-1, -2), "parent -2"),
    ((-1,), "3 tokens but 1 parent"),
])
def test_malformed_trees_are_refused(parents, message):
    tokens = torch.arange(len(parents) if message != "3 tokens but 1 parent" else 3)
    with pytest.raises(DraftError, match=message):
        Draft(tokens, parents)


def test_bad_q_and_tokens_are_refused():
    with pytest.raises(DraftError, match="shape"):
        Draft.chain([1, 2], q=torch.rand(3, 8))
    with pytest.raises(DraftError, match="1-D integer"):
        Draft(torch.tensor([1.0, 2.0]), (-1, 0))


def test_from_sequences_builds_a_trie_breadth_first():
    draft = Draft.from_sequences([[1, 2, 3], [1, 2, 4], [5], [1, 6]])
    assert draft.tokens.tolist() == [1, 5, 2, 6, 3, 4]
    assert draft.parents == (-1, -1, 0, 0, 2, 2)
    assert Draft.from_sequences([]).num_nodes == 0


def test_truncated_drops_deep_nodes_and_keeps_q_rows():
    q = torch.eye(6)[:5]
    draft = Draft(torch.tensor([0, 1, 2, 3, 4]), (-1, 0, 1, -1, 3), q)
    cut = draft.truncated(2)
    assert cut.tokens.tolist() == [0, 1, 3, 4] and cut.parents == (-1, 0, -1, 2)
    assert torch.equal(cut.q, q[[0, 1, 3, 4]])
    assert draft.truncated(3) is draft


def test_aux_tokens_are_validated():
    aux = AuxTokens(torch.tensor([3, 4]), torch.tensor([1, 2]), torch.ones(2, 4, dtype=torch.bool))
    assert Draft.chain([1, 2], ).num_aux == 0
    assert Draft(torch.tensor([1, 2]), (-1, 0), aux=aux).num_aux == 2
    with pytest.raises(DraftError, match="T \\+ A"):
        Draft(torch.tensor([1]), (-1,), aux=aux)
    with pytest.raises(DraftError, match=">= 1"):
        AuxTokens(torch.tensor([3]), torch.tensor([0]), torch.ones(1, 1, dtype=torch.bool))


def test_subtree_keeps_and_renumbers_nodes_with_their_q_rows_and_aux_columns():
    q = torch.eye(6)[:5]
    attends = torch.tensor([[True, False, True, False, True, True]])  # nodes 0, 2, 4, then itself
    aux = AuxTokens(torch.tensor([9]), torch.tensor([1]), attends)
    draft = Draft(torch.tensor([10, 11, 12, 13, 14]), (-1, 0, 1, -1, 3), q, aux)
    kept = draft.subtree([3, 0, 4, 1])  # any order with parents first
    assert kept.tokens.tolist() == [13, 10, 14, 11] and kept.parents == (-1, -1, 0, 1)
    assert torch.equal(kept.q, q[[3, 0, 4, 1]])
    assert kept.aux.attends_to.tolist() == [[False, True, True, False, True]]
    assert draft.subtree([]).num_nodes == 0
    with pytest.raises(DraftError, match="without its parent"):
        draft.subtree([0, 2])
    with pytest.raises(DraftError, match="without its parent"):
        draft.subtree([1, 0])


def test_merge_sequences_counts_the_support_of_every_node():
    tokens, parents, members = merge_sequences([[1, 2, 3], [1, 4], [5], [1, 2]])
    assert tokens == (1, 2, 3, 4, 5) and parents == (-1, 0, 1, 0, -1)
    assert members == ((0, 1, 3), (0, 3), (0,), (1,), (2,))
    assert breadth_first(parents) == [0, 4, 1, 3, 2]
    assert breadth_first(parents, key=lambda node: -len(members[node])) == [0, 4, 1, 3, 2]
    assert breadth_first((-1, -1, 0), key=lambda node: -node) == [1, 0, 2]


def test_tokens_and_parents_may_be_lists():
    draft = Draft([5, 7, 9], [-1, 0, 0])
    assert draft.tokens.dtype == torch.long and draft.tokens.tolist() == [5, 7, 9]
    assert draft.parents == (-1, 0, 0) and draft.children[1] == (1, 2)
    assert Draft([], []).num_nodes == 0
    with pytest.raises(DraftError, match="malformed"):
        Draft([5, 7], [-1, 1])


def test_a_cut_draft_knows_where_it_came_from():
    from specdec import Draft

    original = Draft.chain([4, 5, 6, 7])
    cut = original.subtree(range(2))
    deeper_cut = cut.truncated(1)
    assert cut.derives_from(original) and deeper_cut.derives_from(original) and original.derives_from(original)
    assert not Draft.chain([4, 5]).derives_from(original) and not original.derives_from(cut)
    assert cut.path_tokens((0, 1)) == (4, 5) and original.path_tokens(()) == ()


def test_a_tree_of_rank_paths_is_numbered_breadth_first_with_siblings_by_rank():
    tree = tree_from_paths([[1, 0], [0], [0, 1], [1], [0, 0]])
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0))
    assert tree.parents == (-1, -1, 0, 0, 1) and tree.depths == tree_depths(tree.parents) == (1, 1, 2, 2, 2)
    assert tree.ranks == (0, 1, 0, 1, 0)
    assert tree_from_paths([]).paths == () and check_tree_paths([(0,), (0, 2)]) == [[0], [0, 2]]


@pytest.mark.parametrize("paths, message", [
    ([[0], [0, 0, 0]], r"path \[0, 0, 0\] needs its prefix \[0, 0\] in the tree too"),
    ([[0], [0]], "the tree lists a path twice"),
    ([[]], "a tree path must list at least one rank"),
    ([[-1]], r"path \[-1\] has a negative rank"),
])
def test_malformed_rank_paths_are_refused(paths, message):
    with pytest.raises(ValueError, match=message):
        tree_from_paths(paths)
