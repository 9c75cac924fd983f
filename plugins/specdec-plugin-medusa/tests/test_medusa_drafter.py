"""The drafter: which hidden state feeds which head, no extra forward, and losslessness
(greedy identity with cache checks, sampling distribution) with trained tiny heads."""

import functools

import pytest
import torch

from specdec import (BaseDrafter, CostModel, GreedyAcceptance, HFVerifier, RejectionSampling, SamplingParams,
                     SpeculativeDecoder)
from specdec.testing import assert_lossless, check_greedy_identity, check_sampling_distribution, tiny_llama

from specdec_plugin_medusa.drafter import ConfidencePruning, MedusaDrafter
from specdec_plugin_medusa.testing import medusa_drafter_factory, train_tiny_heads
from specdec_plugin_medusa.trees import TreeLayout, chain

CHAIN = chain(3)
TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]]
PROMPTS = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(11)) * 2]


@functools.lru_cache(maxsize=None)
def greedy_target():
    return tiny_llama(3, vocab_size=12, eos_token_id=11)


@functools.lru_cache(maxsize=None)
def greedy_heads():
    return train_tiny_heads(greedy_target(), num_heads=3, num_layers=2, temperature=0.0)


@functools.lru_cache(maxsize=None)
def sampling_target():
    return tiny_llama(5, vocab_size=8, init_std=0.15)


@functools.lru_cache(maxsize=None)
def sampling_heads():
    return train_tiny_heads(sampling_target(), num_heads=3, num_layers=2, temperature=1.0)


class Recorder(BaseDrafter):
    """Wraps a Medusa drafter; checks each draft against the heads applied to a fresh forward."""

    def __init__(self, inner: MedusaDrafter, target):
        self.inner, self.target = inner, target
        self.hidden_state_layers = inner.hidden_state_layers
        self.drafts = []

    def start(self, prompt, params):
        self.inner.start(prompt, params)

    def propose(self, context):
        draft = self.inner.propose(context)
        self.drafts.append(draft)
        if context.step == 0:
            assert draft.num_nodes == 0  # no hidden state before the prefill
            return draft
        with torch.inference_mode():
            # the last committed token is the root; the heads read the state one position before
            output = self.target(torch.tensor([list(context.tokens[:-1])]), output_hidden_states=True)
            ranked = self.inner.heads(output.hidden_states[-1][0, -1]).topk(self.inner.layout.top_k).indices
        layout = self.inner.layout.truncated(context.max_depth)
        expected = [int(ranked[head, rank]) for head, rank in zip(layout.heads, layout.ranks)]
        assert draft.tokens.tolist() == expected
        assert draft.parents == layout.parents
        assert draft.q is None
        return draft

    def observe(self, outcome):
        self.inner.observe(outcome)


def test_head_k_at_the_last_committed_position_drafts_depth_k_plus_1():
    target, heads = greedy_target(), greedy_heads()
    recorder = Recorder(MedusaDrafter(heads, TreeLayout.from_paths(TREE)), target)
    decoder = SpeculativeDecoder(HFVerifier(target, ()), recorder, GreedyAcceptance())
    result = decoder.generate([1, 2, 3], SamplingParams(max_new_tokens=30))
    assert len(recorder.drafts) == result.stats.steps > 2
    assert result.stats.mean_accepted_tokens > 1.3  # the trained heads do draft useful tokens


def test_each_step_runs_the_target_once():
    target, heads = greedy_target(), greedy_heads()
    decoder = SpeculativeDecoder(HFVerifier(target, ()), MedusaDrafter(heads, TreeLayout.from_paths(TREE)),
                                 RejectionSampling())
    calls = []
    handle = target.register_forward_hook(lambda module, inputs, output: calls.append(1))
    try:
        result = decoder.generate([4, 4, 7], SamplingParams(max_new_tokens=25))
    finally:
        handle.remove()
    assert len(calls) == result.stats.steps  # the heads' hidden state comes from verification


def test_a_tree_deeper_than_the_heads_is_refused():
    with pytest.raises(ValueError, match="only 3 heads"):
        MedusaDrafter(greedy_heads(), TreeLayout.from_paths(chain(4)))


@pytest.mark.parametrize("paths", [CHAIN, TREE], ids=["chain", "tree"])
@pytest.mark.parametrize("policy", [RejectionSampling(), GreedyAcceptance()], ids=["rejection", "greedy"])
def test_greedy_output_and_caches_equal_plain_decoding(paths, policy):
    for max_new_tokens in (1, 2, 7, 24):
        check_greedy_identity(medusa_drafter_factory(greedy_heads(), paths), greedy_target(), PROMPTS,
                              policy=policy, max_new_tokens=max_new_tokens)


SAMPLING_CASES = {
    "tree T=1": (TREE, SamplingParams(temperature=1.0)),
    "tree top-p": (TREE, SamplingParams(temperature=0.7, top_p=0.9)),
    "tree top-k": (TREE, SamplingParams(temperature=1.0, top_k=4)),
    "chain T=0.8": (CHAIN, SamplingParams(temperature=0.8)),
}


#: Run in the slow tier: the warps are checked exactly for rejection sampling in the core tests,
#: and a tree at temperature 0.9 in the whole suite below.
SLOW_CASES = {"tree T=1", "tree top-k", "chain T=0.8"}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case in SLOW_CASES else case
                                  for case in SAMPLING_CASES])
def test_rejection_sampling_with_medusa_drafts_matches_plain_sampling(case):
    paths, params = SAMPLING_CASES[case]
    results = check_sampling_distribution(medusa_drafter_factory(sampling_heads(), paths), sampling_target(),
                                          params, num_samples=1000, max_new_tokens=4)
    assert results["tokens 1-2"].degrees_of_freedom >= 8  # many cells compared, not a pooled few
    assert set(results) == {"tokens 1-2", "token 3", "token 4"}  # deep draft positions checked too


def test_the_whole_losslessness_suite_passes_for_a_medusa_tree():
    trained = {}

    def make_drafter(target):
        if id(target) not in trained:  # heads belong to one target: train them for each
            trained[id(target)] = train_tiny_heads(target, num_heads=3, num_layers=2, temperature=0.0)
        return MedusaDrafter(trained[id(target)], TreeLayout.from_paths(TREE))

    assert_lossless(make_drafter, num_samples=800, sampling_cases=(SamplingParams(temperature=0.9),))


class TopKReportingSoftmaxQ(MedusaDrafter):
    """A broken variant: drafts the heads' top-k tokens (deterministic) but reports the heads'
    softmax as q, the distribution they were not drawn from (HF transformers #32867's bug)."""

    def propose(self, context):
        draft = super().propose(context)
        if draft.num_nodes == 0 or context.params.greedy:
            return draft
        with torch.inference_mode():
            probs = torch.softmax(self.heads(self._hidden, draft.max_depth), dim=-1)  # [depth, V]
        return type(draft)(draft.tokens, draft.parents, probs[[depth - 1 for depth in draft.depths]])


def test_the_distribution_check_catches_a_drafter_that_reports_the_wrong_q():
    with pytest.raises(AssertionError, match="does not match plain sampling"):
        check_sampling_distribution(
            lambda target: TopKReportingSoftmaxQ(sampling_heads(), TreeLayout.from_paths(CHAIN)),
            sampling_target(), SamplingParams(temperature=1.0), num_samples=1000, max_new_tokens=4)


# -- confidence pruning -----------------------------------------------------------------------------


def test_pruning_keeps_the_most_probable_prefix_closed_set_that_pays():
    # nodes: 0 and 1 children of the root, 2 child of 0, 3 child of 2; path probs .9 .05 .72 .36
    probs, parents = [0.9, 0.05, 0.8, 0.5], (-1, -1, 0, 2)
    assert ConfidencePruning(CostModel(node_cost=0.0)).select(probs, parents) == [0, 1, 2, 3]  # free nodes all pay
    # ratio (1 + sum p) / (1 + cost * m) for m = 1..4 at cost 0.1: 1.73 2.18 2.29 2.16
    assert ConfidencePruning(CostModel(node_cost=0.1)).select(probs, parents) == [0, 2, 3]
    # at cost 0.2: 1.58 1.87 1.86: the .36 node no longer pays
    assert ConfidencePruning(CostModel(node_cost=0.2)).select(probs, parents) == [0, 2]
    assert ConfidencePruning(CostModel(node_cost=1.0)).select(probs, parents) == []  # nothing beats a plain step
    assert ConfidencePruning(CostModel(node_cost=0.2), 0.9).select(probs, parents) == []


def test_a_child_is_never_kept_without_its_parent():
    # the child's own probability is high, but its path (through an unlikely parent) is not
    assert ConfidencePruning(CostModel(node_cost=0.1)).select([0.05, 0.99, 0.6], (-1, 0, -1)) == [2]


def test_confidence_pruning_follows_a_measured_cost_curve():
    # one or two nodes nearly free, the third expensive (a CPU in float32): two unlikely root
    # children pay there (ratios 1.12, 1.19, then 0.87), where the line at 0.12 takes only one
    curve = CostModel(curve=((1, 1.03), (2, 1.05), (3, 1.5), (8, 1.9)))
    probs, parents = [0.15, 0.1, 0.05], (-1, -1, -1)
    assert ConfidencePruning(curve).select(probs, parents) == [0, 1]
    assert ConfidencePruning(CostModel(node_cost=0.12)).select(probs, parents) == [0]
