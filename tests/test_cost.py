"""The verification cost model: the linear model, measured curves, and measuring one."""

import pytest

from specdec.cost import DRAFT_SIZES, CostModel, cost_model_for, measure_cost_model, select_nodes
from specdec.testing import tiny_llama


def test_linear_model_charges_a_plain_step_plus_each_node():
    cost = CostModel(node_cost=0.1, draft_overhead=0.5)
    assert cost.step_cost(0) == 1.0  # no draft: a plain step, no overhead
    assert cost.step_cost(1) == pytest.approx(1.6)
    assert cost.step_cost(10) == pytest.approx(2.5)


def test_cost_curve_interpolates_measured_points_and_extends_the_last_slope():
    cost = CostModel(curve=((1, 1.3), (4, 1.6), (8, 1.8)))
    assert cost.step_cost(0) == 1.0
    assert cost.step_cost(1) == pytest.approx(1.3)
    assert cost.step_cost(2) == pytest.approx(1.4)
    assert cost.step_cost(6) == pytest.approx(1.7)
    assert cost.step_cost(12) == pytest.approx(2.0)  # 0.05 per node past the last point
    with pytest.raises(ValueError, match="increasing"):
        CostModel(curve=((4, 1.5), (2, 1.2)))


def test_measuring_gives_a_non_decreasing_curve_once_per_model():
    model = tiny_llama(1)
    measured = measure_cost_model(model)
    sizes = [size for size, _ in measured.curve]
    costs = [value for _, value in measured.curve]
    assert sizes == list(DRAFT_SIZES)
    assert costs[0] >= 1.0 and costs == sorted(costs)  # a larger draft never costs less
    assert measure_cost_model(model) is measured


def test_a_node_cost_parameter_picks_the_linear_model_or_the_measurement():
    model = tiny_llama(2)
    assert cost_model_for(model, 0.1, 0.5) == CostModel(node_cost=0.1, draft_overhead=0.5)
    assert cost_model_for(model, "auto") is measure_cost_model(model)


# -- choosing the nodes worth verifying ------------------------------------------------------------

CHAIN_AND_FORK = (-1, -1, 0, 0, 2)  # nodes 0 -> 2 -> 4 and 0 -> 3; node 1, a second child of the root


def test_select_nodes_respects_budget_depth_and_branches():
    probabilities = [0.9, 0.05, 0.8, 0.1, 0.7]
    free = CostModel(node_cost=0.0)
    everything = select_nodes(probabilities, CHAIN_AND_FORK, free, max_nodes=10, max_depth=10,
                              max_leaves=10)
    assert everything[:3] == [0, 2, 4] and sorted(everything) == [0, 1, 2, 3, 4]
    assert select_nodes(probabilities, CHAIN_AND_FORK, free,
                        max_nodes=2, max_depth=10, max_leaves=10) == [0, 2]
    assert select_nodes(probabilities, CHAIN_AND_FORK, free,
                        max_nodes=10, max_depth=1, max_leaves=10) == [0, 1]
    assert select_nodes(probabilities, CHAIN_AND_FORK, free,
                        max_nodes=10, max_depth=10, max_leaves=1) == [0, 2, 4]


def test_select_nodes_stops_where_the_cost_model_says_and_can_skip():
    cost = CostModel(node_cost=0.1)
    probabilities = [0.9, 0.05, 0.8, 0.1, 0.7]
    # ratios: 1.9/1.1, 2.7/1.2, 3.4/1.3 (best), then adding p = 0.1 or 0.05 lowers it
    assert select_nodes(probabilities, CHAIN_AND_FORK, cost,
                        max_nodes=10, max_depth=10, max_leaves=10) == [0, 2, 4]
    assert select_nodes([0.05, 0.01, 0.04, 0.01, 0.03], CHAIN_AND_FORK, cost, max_nodes=10, max_depth=10,
                        max_leaves=10) == []
    assert select_nodes([0.05, 0.01, 0.04, 0.01, 0.03], CHAIN_AND_FORK, cost, max_nodes=3, max_depth=10,
                        max_leaves=10, adaptive=False) == [0, 2, 4]
    # a fixed overhead can make a lone node not worth it, and two nodes worth it
    overhead = CostModel(node_cost=0.1, draft_overhead=0.5)
    assert select_nodes([0.5, 0.0, 0.5, 0.0, 0.45], CHAIN_AND_FORK, overhead, max_nodes=1, max_depth=10,
                        max_leaves=10) == []
    assert select_nodes([0.5, 0.0, 0.5, 0.0, 0.45], CHAIN_AND_FORK, overhead, max_nodes=3, max_depth=10,
                        max_leaves=10) == [0, 2, 4]


def test_select_nodes_follows_a_measured_cost_curve():
    cost = CostModel(curve=((1, 1.3), (4, 1.6), (8, 1.8)))
    # the curve's price of a first node keeps an unlikely lone node out (the line takes it), a
    # likely chain in
    unlikely = [0.25, 0.0, 0.05, 0.0, 0.02]
    assert select_nodes(unlikely, CHAIN_AND_FORK, cost, max_nodes=10, max_depth=10, max_leaves=1) == []
    line = CostModel(node_cost=0.08)
    assert select_nodes(unlikely, CHAIN_AND_FORK, line, max_nodes=10, max_depth=10, max_leaves=1) == [0]
    assert select_nodes([0.9, 0.0, 0.85, 0.0, 0.8], CHAIN_AND_FORK, cost, max_nodes=10, max_depth=10,
                        max_leaves=1) == [0, 2, 4]


def test_without_limits_every_node_that_pays_is_kept_parents_first():
    # a child is never likelier than its parent: the scan is prefix-closed
    assert select_nodes([0.9, 0.2, 0.8, 0.1, 0.7], CHAIN_AND_FORK, CostModel(node_cost=0.0)) == [0, 2, 4, 1, 3]
    assert select_nodes([0.9, 0.2, 0.8, 0.1, 0.7], CHAIN_AND_FORK, CostModel(node_cost=0.1), min_gain=5.0) == []


# -- learning the acceptance of drafts without probabilities ----------------------------------------


def test_slot_acceptance_starts_at_its_prior_and_follows_recent_outcomes():
    from specdec.cost import SlotAcceptance

    acceptance = SlotAcceptance([0.5, 0.2], prior_weight=2.0, decay=0.9)
    assert acceptance.probability(0) == 0.5 and acceptance.probability(1) == pytest.approx(0.2)
    for _ in range(50):
        acceptance.update(0, True)
    assert acceptance.probability(0) > 0.9 and acceptance.probability(1) == pytest.approx(0.2)  # decay: ~10 trials
    assert acceptance.path_probabilities((-1, 0, 1), (0, 1, 1)) == pytest.approx(
        [acceptance.probability(0), acceptance.probability(0) * 0.2, acceptance.probability(0) * 0.04])


def test_the_tracker_scores_a_tree_against_what_was_committed_drafted_or_not():
    from specdec.cost import AcceptanceTracker, SlotAcceptance

    acceptance = SlotAcceptance([0.5] * 3, prior_weight=1.0, decay=1.0)
    tracker = AcceptanceTracker(acceptance)
    # a chain 7 -> 8 -> 9 proposed after 2 tokens, slot = depth - 1
    tracker.add(2, [7, 8, 9], (-1, 0, 1), [0, 1, 2])
    tracker.update([1, 2, 7])  # depth 1 right; depth 2 waits for its token
    assert acceptance.trials == [1.0, 0.0, 0.0] and len(tracker.pending) == 1
    tracker.update([1, 2, 7, 5, 6])  # depth 2 wrong: the rest of the chain is never tried
    assert acceptance.successes == [1.0, 0.0, 0.0] and acceptance.trials == [1.0, 1.0, 0.0]
    assert not tracker.pending
    tracker.add(0, [4, 5], (-1, -1), [0, 0])  # two siblings: one trial each, one success
    tracker.update([5])
    assert acceptance.successes[0] == 2.0 and acceptance.trials[0] == 3.0
