"""Typical acceptance is lossy under sampling, and by how much: exact TV distance from plain
sampling next to its gain in accepted tokens over rejection sampling, on the same drafts."""

import pytest
import torch

from specdec import Draft, Pipeline, SamplingParams, TorchRandom
from specdec.testing import check_policy_exact, sample_tree, save_tiny_model

from specdec_plugin_typical.lossiness import (FirstTokenTV, exact_comparison, exact_table, measure_pipeline,
                                              random_logits_table)
from specdec_plugin_typical.policy import TypicalAcceptance


def comparison(temperature, widths=(1, 1), mode="top", scale=2.0, seed=0):
    params = SamplingParams(temperature=temperature)
    target = random_logits_table(8, scale, 1000 + seed)
    drafter = random_logits_table(8, scale, 2000 + seed, base=target, noise=0.5)
    return exact_comparison(params, target, lambda rng: sample_tree(rng, params, drafter, widths, mode))


def test_the_lossless_harness_rejects_typical_acceptance_under_sampling():
    # registering it with lossless=False is not a formality: the exact check fails
    with pytest.raises(AssertionError, match="is not lossless"):
        check_policy_exact(TypicalAcceptance(), params_cases=[SamplingParams(temperature=1.0)],
                           shapes=[((2,), "top")])


def test_under_sampling_it_accepts_more_and_drifts_from_the_target_distribution():
    found = comparison(0.7)
    assert found.tv_rejection < 1e-6  # the reference policy is exact on the same drafts
    assert found.tv > 0.05
    assert found.accepted_typical > found.accepted_rejection


def test_at_temperature_zero_it_costs_nothing_and_gains_nothing():
    found = comparison(0.0, widths=(3, 1))
    assert found.tv == 0.0 and found.tv_rejection == 0.0
    assert found.accepted_typical == found.accepted_rejection


def test_the_reported_table_covers_every_setting():
    rows = exact_table(temperatures=(0.0, 0.7), scales=(2.0,), seeds=(0,))
    assert len(rows) == 2 * 3
    for row in rows:
        assert row["tv_rejection"] < 1e-6
        assert (row["tv"] == 0.0) == (row["temperature"] == 0.0)


def test_first_token_tv_on_a_real_pipeline(tmp_path):
    model = save_tiny_model(tmp_path / "tiny", seed=2, init_std=0.3)
    pipeline = Pipeline.from_dict({"target": {"model": model},
                                   "drafter": {"type": "draft_model", "params": {"model": model, "num_tokens": 3}}})
    report = measure_pipeline(pipeline, ["the cat sat", "hello there"], temperature=0.8, max_new_tokens=12)
    assert report["steps_measured"] > 0
    assert 0.0 <= report["first_token_tv"] <= 1.0
    # the draft model is the target itself, so rejection sampling keeps nearly every draft token
    assert report["mean_accepted_rejection"] > 2.0 and report["mean_accepted_typical"] >= 1.0


def test_first_token_tv_is_one_minus_the_target_probability_of_an_accepted_first_token():
    recorder = FirstTokenTV(TypicalAcceptance())
    logits = torch.log(torch.tensor([[0.8, 0.15, 0.05], [0.6, 0.3, 0.1]]))
    recorder.accept(logits, Draft.chain([0]), SamplingParams(temperature=1.0), TorchRandom(0))
    recorder.accept(logits, Draft.chain([2]), SamplingParams(temperature=1.0), TorchRandom(0))
    assert recorder.per_step == pytest.approx([0.2, 0.0])
