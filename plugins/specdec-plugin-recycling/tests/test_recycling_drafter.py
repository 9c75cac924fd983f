"""The drafter's parts: the template walk, what a verification teaches the table (rejected rows
and exact rows included), and pruning to what pays."""

import pytest
import torch

from specdec import CostModel, Draft, DraftContext, SamplingParams, StepOutcome, TorchRandom, path_probabilities

from specdec_plugin_recycling.drafter import MAX_SIBLING_SUM, TokenRecyclingDrafter

V = 16
TREE = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]


def context(tokens, max_depth=8, max_nodes=None):
    return DraftContext(list(tokens), 1, SamplingParams(), max_depth, TorchRandom(0), 1, max_nodes=max_nodes)


def peaked(*best):
    """`[R, V]` logits whose row r ranks the tokens of best[r] first, in order."""
    logits = torch.zeros(len(best), V)
    for row, tokens in enumerate(best):
        for rank, token in enumerate(tokens):
            logits[row, token] = 10.0 - rank
    return logits


def drafter_with_rows(rows, **kwargs):
    """A drafter whose table has `rows` (token -> its best tokens, best first)."""
    drafter = TokenRecyclingDrafter(TREE, adaptive=False, **kwargs)
    drafter.table.update(list(rows), peaked(*rows.values()))
    return drafter


def edges(draft):
    """(parent token, token) of every node; the root is -1."""
    tokens = draft.tokens.tolist()
    return sorted(((-1 if parent < 0 else tokens[parent]), token) for token, parent in zip(tokens, draft.parents))


def test_the_template_is_walked_through_the_rows_of_each_token():
    drafter = drafter_with_rows({1: [2, 3], 2: [4, 5], 3: [6, 7]})  # 4 has no row: [0, 0, 0] stays out
    draft = drafter.propose(context([9, 1]))
    assert edges(draft) == [(-1, 2), (-1, 3), (2, 4), (2, 5), (3, 6)]
    assert drafter.propose(context([9, 8])).num_nodes == 0  # a root without a row drafts nothing


def test_the_draft_respects_the_step_budget_and_depth():
    drafter = drafter_with_rows({1: [2, 3], 2: [4, 5], 3: [6, 7], 4: [8, 9]})
    assert drafter.propose(context([1])).num_nodes == 6
    assert drafter.propose(context([1], max_nodes=2)).num_nodes == 2
    assert drafter.propose(context([1], max_depth=1)).max_depth == 1
    expensive = drafter_with_rows({1: [2, 3]}, cost=CostModel(node_cost=5.0))
    expensive.adaptive = True
    assert expensive.propose(context([1])).num_nodes == 0  # nothing pays for a verification this costly


def outcome(draft, path, next_token, tokens, logits):
    accepted = tuple(draft.tokens[list(path)].tolist())
    return StepOutcome(draft=draft, path=path, accepted_tokens=accepted, next_token=next_token,
                       tokens=tokens, logits=logits)


def test_every_verified_row_is_recycled_and_the_written_text_wins_over_rejected_rows():
    drafter = TokenRecyclingDrafter(TREE, adaptive=False)
    # root 1 -> node 0 (2) -> {node 1 (4) -> node 3 (2), node 2 (5)}
    draft = Draft([2, 4, 5, 2], (-1, 0, 0, 1))
    logits = peaked([2, 3], [4, 5], [6, 7], [8, 9], [10, 11])  # rows: root, nodes 0-3
    drafter.observe(outcome(draft, (0,), 5, [1, 2, 5], logits))  # 2 accepted, then the target's 5
    assert drafter.table.row(1)[0][:2] == [2, 3]  # the root
    assert drafter.table.row(4)[0][:2] == [6, 7] and drafter.table.row(5)[0][:2] == [8, 9]  # rejected nodes
    assert drafter.table.row(2)[0][:2] == [4, 5]  # accepted node 0's row beats rejected node 3's (also 2)
    assert drafter.table.num_rows == 4
    found = drafter.candidates([1, 2, 5])
    assert found.tokens[:2] == [8, 9]  # the next step walks from 5's row, learned from a rejected node


def test_without_logits_nothing_is_recycled():
    drafter = TokenRecyclingDrafter(TREE)
    drafter.observe(outcome(Draft([2], (-1,)), (), 3, [1, 3], None))
    assert drafter.table.num_rows == 0


def test_a_per_request_table_starts_empty_and_a_shared_one_keeps_its_rows():
    kept = drafter_with_rows({1: [2, 3]})
    kept.start([1], SamplingParams())
    assert kept.table.num_rows == 1
    fresh = drafter_with_rows({1: [2, 3]}, per_request=True)
    fresh.start([1], SamplingParams())
    assert fresh.table.num_rows == 0


def test_siblings_share_at_most_one_chance_and_paths_multiply():
    chances = path_probabilities((-1, -1, 0), [0.9, 0.6, 0.5], max_sibling_sum=MAX_SIBLING_SUM)
    assert chances[0] + chances[1] == pytest.approx(0.99)
    assert chances[2] == pytest.approx(chances[0] * 0.5)


def test_a_tree_deeper_in_rank_than_the_table_is_refused():
    from specdec_plugin_recycling.drafter import RecyclingState

    with pytest.raises(ValueError, match="the table keeps only the top 2"):
        TokenRecyclingDrafter([[0], [2]], state=RecyclingState.new(2))
