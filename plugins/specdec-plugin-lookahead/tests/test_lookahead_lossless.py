"""Lookahead and Jacobi through specdec's losslessness harness, and the control that must fail it.

`assert_lossless` checks greedy identity against plain decoding and `model.generate` (with
cache checks after every step), batched greedy identity, and the sampling distribution, on
seeded tiny models. Each case also counts what was drafted and what the window learned, so a
drafter that never proposes, or a window whose aux logits are never used, fails here.
"""

import pytest

from specdec import CostModel, GreedyAcceptance
from specdec.testing import (AcceptsEverythingWhenSampling, SAMPLING_CASES, assert_lossless,
                             check_greedy_identity, tiny_llama)

from specdec_plugin_lookahead.drafter import JacobiDrafter, LookaheadDrafter
from specdec_plugin_lookahead.pool import WINDOW


def counted(kind, **kwargs):
    """A factory of drafters of `kind` that add up their drafted nodes, aux rows, the window's
    updates from aux logits and the window's n-grams in their pools."""
    counts = {"nodes": 0, "trees": 0, "aux": 0, "advanced": 0, "window_ngrams": 0}

    class Counting(kind):
        def propose(self, context):
            draft = super().propose(context)
            counts["nodes"] += draft.num_nodes
            counts["trees"] += draft.num_nodes > 0 and not draft.is_chain
            counts["aux"] += draft.num_aux
            return draft

        def observe(self, outcome):
            levels = [list(level) for level in getattr(getattr(self, "window", None), "levels", [])]
            super().observe(outcome)
            if outcome.aux_logits is not None and levels != getattr(getattr(self, "window", None), "levels", []):
                counts["advanced"] += 1
            pool = getattr(self, "pool", None)
            if pool is not None:
                counts["window_ngrams"] = max(counts["window_ngrams"], sum(
                    source == WINDOW for entries in pool.table.values() for source in entries.values()))

    return (lambda target: Counting(**kwargs)), counts


@pytest.mark.parametrize("kwargs, sampling_cases, min_nodes", [
    ({"window": 3, "ngram": 3, "guesses": 3}, SAMPLING_CASES[:2], 1000),
    # every candidate from the window: none before its levels fill (N - 2 steps); the fast tier
    # checks the window-only pool's greedy identity (test_the_window_alone_fills_the_pool_that_drafts)
    pytest.param({"window": 2, "ngram": 4, "guesses": 4, "pool_from_prompt": False}, SAMPLING_CASES[2:], 300,
                 marks=pytest.mark.slow),
    # everything auto, as on a GPU; the fast tier sizes a Jacobi window automatically (test_jacobi_is_lossless[auto])
    pytest.param({"cost": CostModel(node_cost=0.02)}, SAMPLING_CASES[1:3], 300, marks=pytest.mark.slow),
], ids=["W3-N3-G3", "W2-N4-G4-window-only", "auto"])
def test_lookahead_is_lossless(kwargs, sampling_cases, min_nodes):
    make, counts = counted(LookaheadDrafter, **kwargs)
    assert_lossless(make, sampling_cases=sampling_cases, num_samples=800)
    assert counts["nodes"] > min_nodes and counts["trees"] > 0  # it drafts, and trees
    assert counts["aux"] > 0 and counts["advanced"] > 10  # the window rode along and learned from its logits
    assert counts["window_ngrams"] > 0  # ... and filled the pool


def test_the_window_alone_fills_the_pool_that_drafts():
    """Without the text's n-grams every candidate comes from the window's trajectories."""
    make, counts = counted(LookaheadDrafter, window=3, ngram=3, guesses=3, pool_from_prompt=False)
    target = tiny_llama(1, vocab_size=20, eos_token_id=19)
    check_greedy_identity(make, target, [[1, 2, 3, 1, 2, 3], [7], list(range(19))], max_new_tokens=30)
    assert counts["window_ngrams"] > 0 and counts["nodes"] > 0


@pytest.mark.parametrize("kwargs", [pytest.param({"window": 3}, marks=pytest.mark.slow),  # auto covers the drafter
                                    {"window": "auto", "cost": CostModel(node_cost=0.01)}], ids=["W3", "auto"])
def test_jacobi_is_lossless(kwargs):
    make, counts = counted(JacobiDrafter, **kwargs)
    assert_lossless(make, sampling_cases=SAMPLING_CASES[:2], num_samples=800)
    assert counts["nodes"] > 100 and counts["aux"] == 0


def test_greedy_acceptance_gives_plain_greedy_output():
    target = tiny_llama(1, vocab_size=20, eos_token_id=19)
    prompts = [[1, 2, 3, 1, 2, 3], [7], list(range(19))]
    for kind, kwargs in ((LookaheadDrafter, {"window": 4, "ngram": 5, "guesses": 6}), (JacobiDrafter, {"window": 5})):
        make, counts = counted(kind, **kwargs)
        check_greedy_identity(make, target, prompts, policy=GreedyAcceptance(), max_new_tokens=30)
        assert counts["nodes"] > 0


@pytest.mark.slow
def test_lookahead_defaults_pass_the_full_check():
    make, counts = counted(LookaheadDrafter)
    assert_lossless(make)
    assert counts["nodes"] > 0


@pytest.mark.parametrize("kind, kwargs", [(LookaheadDrafter, {"window": 3, "ngram": 3, "guesses": 3}),
                                          (JacobiDrafter, {"window": 3})], ids=["lookahead", "jacobi"])
def test_the_harness_fails_them_under_a_broken_policy(kind, kwargs):
    make, _ = counted(kind, **kwargs)
    with pytest.raises(AssertionError, match="AcceptsEverythingWhenSampling does not match plain sampling"):
        assert_lossless(make, policy=AcceptsEverythingWhenSampling(), quick=True)
