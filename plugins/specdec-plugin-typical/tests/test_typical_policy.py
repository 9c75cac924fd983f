"""The typical acceptance rule: the exact criterion, paths in trees, the token after them, and
exact greedy decoding at temperature 0."""

import functools
import math

import pytest
import torch

from specdec import Draft, DraftModelDrafter, SamplingParams
from specdec.testing import (ModelTreeDrafter, check_greedy_identity, check_policy_exact, enumerate_outcomes,
                             exact_step_distribution, exact_target_distribution, max_abs_difference,
                             perturbed_copy, tiny_llama)

from specdec_plugin_typical.policy import TypicalAcceptance, plausibility_thresholds

T1 = SamplingParams(temperature=1.0)
# a peaked distribution: entropy 0.767, so min(0.09, 0.3 * exp(-0.767) = 0.139) = 0.09 binds
PEAKED = [0.80, 0.07, 0.06, 0.04, 0.03]


def logits_of(*rows):
    """Logits whose softmax is each given distribution (zeros become -inf)."""
    table = torch.tensor(rows, dtype=torch.float64)
    return torch.where(table > 0, table.log(), torch.tensor(-math.inf, dtype=torch.float64)).float()


def accepted_path(policy, logits, draft, params=T1):
    """The accepted path (typical acceptance decides it without randomness)."""
    outcomes = enumerate_outcomes(lambda rng: policy.accept(logits, draft, params, rng).path)
    [path] = outcomes
    return path


def test_the_threshold_is_min_of_epsilon_and_delta_times_exp_minus_entropy():
    probs = torch.tensor([PEAKED, [0.25, 0.25, 0.25, 0.25, 0.0]])
    entropy = -(probs[0] * probs[0].log()).sum()
    expected = [min(0.09, 0.3 * math.exp(-float(entropy))), min(0.09, 0.3 * math.exp(-math.log(4)))]
    torch.testing.assert_close(plausibility_thresholds(probs, 0.09, 0.3), torch.tensor(expected))
    assert expected[0] == 0.09 and expected[1] == pytest.approx(0.075)


def test_a_token_below_epsilon_is_refused_where_the_distribution_is_peaked():
    logits = logits_of(PEAKED, PEAKED)
    assert accepted_path(TypicalAcceptance(), logits, Draft.chain([0])) == (0,)
    assert accepted_path(TypicalAcceptance(), logits, Draft.chain([1])) == ()  # 0.07 < 0.09
    # with epsilon and delta swapped (the reference helpers' bug) the same token passes:
    # min(0.3, 0.09 * exp(-0.767)) = 0.042 < 0.07
    assert accepted_path(TypicalAcceptance(epsilon=0.3, delta=0.09), logits, Draft.chain([1])) == (0,)


def test_where_the_target_is_unsure_the_entropy_term_lowers_the_bar():
    flat = [1 / 40] * 40  # threshold 0.3 * exp(-log 40) = 0.0075 < 0.025
    assert accepted_path(TypicalAcceptance(), logits_of(flat, flat), Draft.chain([7])) == (0,)


def test_the_criterion_uses_the_sampling_distribution_temperature_top_k_and_top_p():
    logits = logits_of(PEAKED, PEAKED)
    draft = Draft.chain([1])
    assert accepted_path(TypicalAcceptance(), logits, draft, SamplingParams(temperature=1.0)) == ()
    # at T=2 token 1 has probability 0.149 > 0.09
    assert accepted_path(TypicalAcceptance(), logits, draft, SamplingParams(temperature=2.0)) == (0,)
    # ...unless top-k or top-p would never sample it
    assert accepted_path(TypicalAcceptance(), logits, draft, SamplingParams(temperature=2.0, top_k=1)) == ()
    assert accepted_path(TypicalAcceptance(), logits, draft, SamplingParams(temperature=2.0, top_p=0.3)) == ()


def test_in_a_tree_the_longest_plausible_path_wins_and_likelihood_breaks_ties():
    policy = TypicalAcceptance()
    root = [0.5, 0.3, 0.2, 0.0]
    # nodes: 0 = token 0 (P .5), 1 = token 1 (P .3); 2 = child of 0 with P .4; 3 = child of 1 with P .9
    draft = Draft(torch.tensor([0, 1, 3, 3]), (-1, -1, 0, 1))
    logits = logits_of(root, [0.1, 0.1, 0.4, 0.4], [0.05, 0.05, 0.0, 0.9], [0.25] * 4, [0.25] * 4)
    assert accepted_path(policy, logits, draft) == (1, 3)  # log .3 + log .9 > log .5 + log .4
    # a deeper path beats a more likely shorter one
    deeper = Draft(torch.tensor([0, 1, 3, 2]), (-1, -1, 1, 2))
    logits = logits_of(root, [0.25] * 4, [0.05, 0.05, 0.0, 0.9], [0.1, 0.1, 0.7, 0.1], [0.25] * 4)
    assert accepted_path(policy, logits, deeper) == (1, 2, 3)
    # a child of an implausible node is never accepted
    blocked = Draft(torch.tensor([3, 0]), (-1, 0))
    assert accepted_path(policy, logits_of(root, [0.9, 0.1, 0, 0], [0.25] * 4), blocked) == ()


def test_the_next_token_is_a_sample_of_the_target_at_the_last_accepted_node():
    policy = TypicalAcceptance()
    draft = Draft(torch.tensor([0, 2]), (-1, 0))
    rows = [[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.6, 0.1], [0.4, 0.3, 0.2, 0.1]]
    logits = logits_of(*rows)
    outcomes = enumerate_outcomes(lambda rng: policy.accept(logits, draft, T1, rng))
    assert {acceptance.path for acceptance in outcomes} == {(0, 1)}
    tokens = {acceptance.next_token: probability for acceptance, probability in outcomes.items()}
    assert tokens == pytest.approx({index: p for index, p in enumerate(rows[2])})
    # nothing accepted: a sample of the target at the root
    outcomes = enumerate_outcomes(lambda rng: policy.accept(logits, Draft.chain([3]), T1, rng).next_token)
    assert outcomes == pytest.approx({0: 0.5, 1: 0.3, 2: 0.2})


def test_draft_probabilities_do_not_change_the_decision():
    logits = logits_of(PEAKED, PEAKED, PEAKED)
    q = torch.softmax(torch.randn(2, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert accepted_path(TypicalAcceptance(), logits, Draft.chain([0, 0], q)) == \
        accepted_path(TypicalAcceptance(), logits, Draft.chain([0, 0])) == (0, 1)


def test_with_an_empty_draft_it_is_plain_sampling():
    generator = torch.Generator().manual_seed(3)
    table = {}

    def target(path):
        return table.setdefault(path, torch.randn(5, generator=generator) * 2)

    for params in (T1, SamplingParams(temperature=0.7, top_p=0.8)):
        actual = exact_step_distribution(TypicalAcceptance(), params, target, lambda rng: Draft.empty(), 2)
        assert max_abs_difference(actual, exact_target_distribution(params, target, 2)) < 1e-6


def test_at_temperature_zero_it_is_exactly_greedy_on_chains_and_trees():
    check_policy_exact(TypicalAcceptance(), params_cases=[SamplingParams(temperature=0.0)])


@functools.lru_cache(maxsize=None)
def target_model():
    return tiny_llama(3, vocab_size=16, eos_token_id=15)


@pytest.mark.parametrize("make_drafter", [
    lambda target: DraftModelDrafter(perturbed_copy(target, 0.3, seed=4), num_tokens=4),
    lambda target: ModelTreeDrafter(perturbed_copy(target, 0.3, seed=4), (3, 2, 1), "top"),
], ids=["draft-model chain", "top-k tree"])
def test_greedy_decoding_is_unchanged_at_temperature_zero(make_drafter):
    for max_new_tokens in (1, 5, 20):
        check_greedy_identity(make_drafter, target_model(), [[1, 2, 3], [9], [4, 4, 4, 7, 2]],
                              policy=TypicalAcceptance(), max_new_tokens=max_new_tokens)
