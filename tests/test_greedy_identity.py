"""Greedy identity and cache exactness on tiny random Llama models (tests 2 and 3 of the core issue).

Speculative greedy output must equal the engine's plain decoding and `model.generate()` token for
token; after every step the target cache, and the draft model's, must equal a fresh forward over
the committed tokens. `check_greedy_identity` checks all three.
"""

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specdec import Draft, GreedyAcceptance, RejectionSampling, SamplingParams, SpeculativeDecoder
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.testing import ModelTreeDrafter, check_greedy_identity, perturbed_copy, tiny_llama
from specdec.verifiers.hf import HFVerifier

VOCAB = 24


@functools.lru_cache(maxsize=None)
def target_model(eos_token_id=None):
    return tiny_llama(3, vocab_size=VOCAB, eos_token_id=eos_token_id)


@functools.lru_cache(maxsize=None)
def draft_model(noise):
    return perturbed_copy(target_model(), noise, seed=11)


prompts = st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12), min_size=1, max_size=3)


@given(prompts=prompts, num_tokens=st.integers(1, 8), noise=st.sampled_from([0.0, 0.3, 1.0]),
       max_new_tokens=st.integers(1, 20))
def test_draft_model_chains_decode_exactly_like_greedy(prompts, num_tokens, noise, max_new_tokens):
    check_greedy_identity(lambda target: DraftModelDrafter(draft_model(noise), num_tokens),
                          target_model(), prompts, max_new_tokens=max_new_tokens)


@given(prompts=prompts, widths=st.lists(st.integers(1, 3), min_size=1, max_size=4),
       mode=st.sampled_from(["top", "iid", "without_replacement"]), max_new_tokens=st.integers(1, 16))
def test_tree_drafts_decode_exactly_like_greedy(prompts, widths, mode, max_new_tokens):
    check_greedy_identity(lambda target: ModelTreeDrafter(draft_model(0.3), widths, mode),
                          target_model(), prompts, max_new_tokens=max_new_tokens)


def test_greedy_policy_gives_the_same_output_as_rejection_at_temperature_zero():
    check_greedy_identity(lambda target: DraftModelDrafter(draft_model(0.3), 4), target_model(),
                          [[1, 2, 3], [7, 7]], policy=GreedyAcceptance(), max_new_tokens=20)


def _first_greedy_tokens(prompt, count):
    decoder = SpeculativeDecoder(HFVerifier(target_model(), ()), NoDrafter(), RejectionSampling())
    return decoder.generate(prompt, SamplingParams(max_new_tokens=count)).tokens


@pytest.mark.parametrize("eos_index", [1, 4, 6])
def test_eos_inside_a_draft_stops_exactly_there(eos_index):
    """Make the greedy continuation's token at `eos_index` the EOS: a perfect drafter then
    proposes it in the middle of a draft, and generation must stop right after it."""
    prompt = [2, 9, 4]
    eos = _first_greedy_tokens(prompt, 12)[eos_index]
    target = tiny_llama(3, vocab_size=VOCAB, eos_token_id=eos)
    outputs = check_greedy_identity(lambda t: DraftModelDrafter(target, 8), target, [prompt],
                                    max_new_tokens=12)
    assert outputs[0][-1] == eos and eos not in outputs[0][:-1]


@pytest.mark.parametrize("max_new_tokens", range(1, 11))
def test_max_new_tokens_at_every_draft_edge(max_new_tokens):
    """A perfect drafter with k=4 accepts whole drafts; every limit 1..10 falls somewhere in one."""
    prompt = [5, 1, 8]
    decoder = SpeculativeDecoder(HFVerifier(target_model(), ()), DraftModelDrafter(target_model(), 4),
                                 RejectionSampling())
    result = decoder.generate(prompt, SamplingParams(max_new_tokens=max_new_tokens))
    assert result.tokens == _first_greedy_tokens(prompt, 20)[:max_new_tokens]
    assert result.finish_reason == "length"


class EveryOtherStep(DraftModelDrafter):
    """Drafts only on even steps, so a fallback behind it is used on odd steps."""

    def propose(self, context):
        if context.step % 2:
            self._last_draft = None
            return Draft.empty()
        return super().propose(context)


def test_fallback_drafters_stay_in_sync_and_lossless():
    from specdec.drafters.fallback import FallbackDrafter

    def make(target):
        return FallbackDrafter([EveryOtherStep(draft_model(0.3), 2), DraftModelDrafter(draft_model(0.0), 3)])

    check_greedy_identity(make, target_model(), [[1, 2, 3], [9, 8, 7, 6]], max_new_tokens=30)
