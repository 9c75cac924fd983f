"""The verification cost model: the linear model, measured curves, and measuring one."""

import pytest

from specdec.cost import DRAFT_SIZES, CostModel, cost_model_for, measure_cost_model
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
