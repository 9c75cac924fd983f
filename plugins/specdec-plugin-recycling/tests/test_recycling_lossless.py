"""Token Recycling through specdec's losslessness harness, and the controls that must fail it.

`assert_lossless` checks greedy identity against plain decoding and `model.generate` (with
cache checks), batched greedy identity, and the sampling distribution, on seeded tiny models.
Each case also counts what was drafted, so a drafter that never proposes (which would pass
trivially) or drafts no tree fails here.
"""

import pytest
import torch

from specdec import CostModel, GreedyAcceptance, SamplingParams
from specdec.testing import (AcceptsEverythingWhenSampling, SAMPLING_CASES, assert_lossless, check_greedy_identity,
                             check_sampling_distribution, tiny_llama)

from specdec_plugin_recycling.drafter import TokenRecyclingDrafter


class Counting(TokenRecyclingDrafter):
    """Counts drafted nodes and tree-shaped drafts."""

    counts: dict

    def propose(self, context):
        draft = super().propose(context)
        self.counts["nodes"] += draft.num_nodes
        self.counts["trees"] += draft.num_nodes > 0 and not draft.is_chain
        return draft


def counted(**kwargs):
    counts = {"nodes": 0, "trees": 0}

    def make(target):
        drafter = Counting(**kwargs)
        drafter.counts = counts
        return drafter

    return make, counts


@pytest.mark.parametrize("kwargs, sampling_cases, min_nodes", [
    # the paper's whole template on every step the table allows (no pruning); the fast tier checks
    # the unpruned template's greedy identity (test_greedy_acceptance_and_per_request_tables_...)
    pytest.param({"adaptive": False}, SAMPLING_CASES[:2], 50_000, marks=pytest.mark.slow),
    # pruned to what pays at a cheap node cost, as on a GPU
    ({"cost": CostModel(node_cost=0.02)}, SAMPLING_CASES[2:], 10_000),
    pytest.param({}, SAMPLING_CASES, 10_000, marks=pytest.mark.slow),  # the defaults, every case, 1500 samples
], ids=["full-template", "pruned", "defaults-full-check"])
def test_token_recycling_is_lossless(kwargs, sampling_cases, min_nodes, request):
    make, counts = counted(**kwargs)
    slow = request.node.callspec.id == "defaults-full-check"
    assert_lossless(make, sampling_cases=sampling_cases, num_samples=None if slow else 800)
    assert counts["nodes"] > min_nodes and counts["trees"] > 0


def test_greedy_acceptance_and_per_request_tables_give_plain_greedy_output():
    target = tiny_llama(1, vocab_size=20, eos_token_id=19)
    prompts = [[1, 2, 3, 1, 2, 3], [7], list(range(19))]
    for kwargs in ({"per_request": True}, {"adaptive": False, "max_nodes": 12}):
        make, counts = counted(**kwargs)
        check_greedy_identity(make, target, prompts, policy=GreedyAcceptance(), max_new_tokens=30)
        assert counts["nodes"] > 0



def test_the_harness_fails_token_recycling_under_a_broken_policy():
    make, _ = counted(adaptive=False)
    with pytest.raises(AssertionError, match="AcceptsEverythingWhenSampling does not match plain sampling"):
        assert_lossless(make, policy=AcceptsEverythingWhenSampling(), quick=True)


class UniformQ(TokenRecyclingDrafter):
    """A broken variant: drafts the table's deterministic candidates but reports a uniform q over
    the vocabulary, as if each token had been sampled from it (a point mass is what it is)."""

    def propose(self, context):
        draft = super().propose(context)
        if draft.num_nodes == 0 or context.params.greedy:
            return draft
        q = torch.full((draft.num_nodes, self.vocab_size), 1.0 / self.vocab_size)
        return type(draft)(draft.tokens, draft.parents, q)


def test_the_distribution_check_catches_a_drafter_that_reports_a_wrong_q():
    target = tiny_llama(0, vocab_size=12, init_std=0.1)

    def make(model):
        drafter = UniformQ(adaptive=False, max_nodes=8)
        drafter.vocab_size = model.config.vocab_size
        return drafter

    with pytest.raises(AssertionError, match="UniformQ and RejectionSampling does not match plain sampling"):
        check_sampling_distribution(make, target, SamplingParams(temperature=1.0), num_samples=800, max_new_tokens=4)
