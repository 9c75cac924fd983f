"""Losslessness of the acceptance policies, computed exactly (test 1 of the core issue).

Every random choice of drafting and acceptance goes through a RandomSource; the enumerator in
specdec.testing explores all of them with their probabilities, so these tests compare exact
distributions (to 1e-6), not samples. Broken policies must fail the same check.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from specdec import Acceptance, Draft, GreedyAcceptance, InputError, RejectionSampling, SamplingParams
from specdec.testing import (
    AlwaysAccept,
    check_policy_exact,
    exact_step_distribution,
    exact_target_distribution,
    max_abs_difference,
    sample_tree,
)

TOLERANCE = 1e-6

logit_value = st.one_of(
    st.floats(-8, 8, allow_nan=False),
    st.just(float("-inf")),  # zero probability
    st.just(30.0),  # near point mass
)


@st.composite
def logits_tables(draw, vocab_size):
    """Logits as a function of the path; each row keeps at least one finite entry."""
    rows = {}

    def row():
        values = draw(st.lists(logit_value, min_size=vocab_size, max_size=vocab_size))
        if all(v == float("-inf") for v in values):
            values[draw(st.integers(0, vocab_size - 1))] = 0.0
        return torch.tensor(values)

    table = {(): row()}
    for first in range(vocab_size):
        table[(first,)] = row()
        for second in range(vocab_size):
            table[(first, second)] = row()
    rows.update(table)
    # deeper paths reuse the rows of their last two tokens: still a function of the path
    return lambda path: rows[path[-2:]]


sampling_params = st.one_of(
    st.builds(SamplingParams, temperature=st.sampled_from([1.0, 0.7, 1.6])),
    st.builds(SamplingParams, temperature=st.just(1.0), top_k=st.integers(1, 3)),
    st.builds(SamplingParams, temperature=st.just(0.8), top_p=st.floats(0.3, 0.95)),
    st.just(SamplingParams(temperature=0.0)),
)

tree_shapes = st.sampled_from([
    ((1,), "iid"), ((3,), "iid"), ((1, 1), "iid"), ((2, 2), "iid"), ((1, 1, 1), "iid"),
    ((2,), "without_replacement"), ((3, 1), "without_replacement"),
    ((1,), "top"), ((3, 2), "top"),
])


@given(data=st.data(), params=sampling_params, shape=tree_shapes)
def test_rejection_sampling_output_equals_plain_sampling(data, params, shape):
    vocab_size = 3
    target = data.draw(logits_tables(vocab_size))
    draft = data.draw(logits_tables(vocab_size))
    widths, mode = shape
    num_tokens = len(widths) + 1  # every token the step can emit: the path and its bonus
    expected = exact_target_distribution(params, target, num_tokens)
    actual = exact_step_distribution(RejectionSampling(), params, target,
                                     lambda rng: sample_tree(rng, params, draft, widths, mode), num_tokens)
    assert max_abs_difference(expected, actual) <= TOLERANCE


@given(data=st.data(), shape=tree_shapes)
def test_greedy_policy_equals_greedy_decoding(data, shape):
    target = data.draw(logits_tables(4))
    draft = data.draw(logits_tables(4))
    params = SamplingParams(temperature=0.0)
    num_tokens = len(shape[0]) + 1
    expected = exact_target_distribution(params, target, num_tokens)
    actual = exact_step_distribution(GreedyAcceptance(), params, target,
                                     lambda rng: sample_tree(rng, params, draft, shape[0], "top"), num_tokens)
    assert actual == expected


def test_greedy_policy_refuses_sampling():
    with pytest.raises(InputError, match="temperature"):
        GreedyAcceptance().accept(torch.zeros(1, 4), Draft.empty(), SamplingParams(temperature=1.0), None)


def test_harness_check_passes_for_rejection_sampling():
    check_policy_exact(RejectionSampling(), seeds=(0,))


# -- power: deliberately broken policies must fail the same exact check ----------------------------


class ResampleFromTarget(RejectionSampling):
    """On rejection, draws the correction from p instead of the residual norm(max(0, p - q))."""

    def _accept_chain(self, probs, draft, q, rng):
        ratio = (probs[torch.arange(draft.num_nodes), draft.tokens] / q[torch.arange(draft.num_nodes), draft.tokens]).clamp(max=1)
        coins = rng.bernoulli(ratio)
        accepted = coins.index(False) if False in coins else draft.num_nodes
        return Acceptance(tuple(range(accepted)), rng.categorical(probs[accepted]))


class ForgetsSiblingResidual(RejectionSampling):
    """Tries every sibling against the untouched p (no residual update between siblings)."""

    def _accept_tree(self, probs, draft, q, rng):
        tokens, path, row = draft.tokens.tolist(), [], 0
        while draft.children[row]:
            for child in draft.children[row]:
                chance = (probs[row][tokens[child]] / q[child, tokens[child]]).clamp(max=1)
                if rng.bernoulli(chance.reshape(1))[0]:
                    path.append(child)
                    row = child + 1
                    break
            else:
                residual = (probs[row] - q[draft.children[row][-1]]).clamp(min=0)
                return Acceptance(tuple(path), rng.categorical(residual / residual.sum()))
        return Acceptance(tuple(path), rng.categorical(probs[row]))


class BonusFromRoot(RejectionSampling):
    """After a fully accepted chain, draws the bonus token from the root row instead of the leaf's."""

    def _accept_chain(self, probs, draft, q, rng):
        acceptance = super()._accept_chain(probs, draft, q, rng)
        if len(acceptance.path) == draft.num_nodes and draft.num_nodes > 1:
            return Acceptance(acceptance.path, rng.categorical(probs[0]))
        return acceptance


@pytest.mark.parametrize("policy, shapes", [
    (BonusFromRoot(), (((1, 1), "iid"),)),
    (AlwaysAccept(), (((1,), "iid"),)),
    (ResampleFromTarget(), (((1,), "iid"),)),
    (ForgetsSiblingResidual(), (((3,), "iid"),)),
])
def test_broken_policies_fail_the_exact_check(policy, shapes):
    with pytest.raises(AssertionError, match="not lossless"):
        check_policy_exact(policy, seeds=(0,), shapes=shapes,
                           params_cases=(SamplingParams(temperature=1.0),))
