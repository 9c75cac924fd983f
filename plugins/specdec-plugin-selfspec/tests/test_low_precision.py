"""`low_precision`: lossless through the harness, its own cache exact after every rollback, broken
variants caught."""

import pytest
import torch

from specdec import Draft, GenerationError, HFVerifier, NoDrafter, RejectionSampling, SamplingParams, SpeculativeDecoder
from specdec.testing import (
    AcceptsEverythingWhenSampling,
    assert_lossless,
    check_batched_greedy_identity,
    check_greedy_identity,
    check_sampling_distribution,
    tiny_llama,
)

from specdec_plugin_selfspec.low_precision import LowPrecisionDrafter
from specdec_plugin_selfspec.testing import assert_store_matches, build, factory
from specdec_plugin_selfspec.vocab import DraftVocab

PROMPTS = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(11)) * 2]


class StoreChecked:
    """Wraps a drafter: after every step its own cache must equal a fresh forward."""

    def __init__(self, inner, model):
        self.inner, self.model, self.checks = inner, model, 0
        self.hidden_state_layers = inner.hidden_state_layers
        self.wants_logits = False

    def start(self, prompt, params):
        self.inner.start(prompt, params)

    def propose(self, context):
        return self.inner.propose(context)

    def observe(self, outcome):
        self.inner.observe(outcome)
        assert_store_matches(self.inner, self.model, list(outcome.tokens))
        self.checks += 1


def test_int8_copy_passes_the_quick_harness():
    assert_lossless(factory("low_precision", format="int8"), quick=True)


@pytest.mark.parametrize("params", [{"format": "int8", "verifier": False}, {"format": "bfloat16"},
                                    {"format": "int8", "skip": [1]}],
                         ids=["int8-prefilling-its-own-prompt", "bfloat16", "int8-skipping-a-layer"])
def test_other_copies_decode_greedy_exactly_alone_and_in_batches(params):
    params = dict(params)
    share = params.pop("verifier", True)
    target = tiny_llama(0, vocab_size=12, eos_token_id=11)
    make = lambda model, verifier: build("low_precision", model, verifier if share else None, **params)  # noqa: E731
    counted = []
    check_greedy_identity(lambda model, verifier: counted.append(make(model, verifier)) or counted[-1], target,
                          PROMPTS, max_new_tokens=20)
    assert any(drafter.sizer.tracker is not None and drafter.length for drafter in counted)
    check_batched_greedy_identity(make, target, PROMPTS, max_new_tokens=12)


@pytest.mark.slow
def test_int8_copy_passes_the_whole_harness():
    """Greedy identity at 4 lengths with cache checks, batches of 2 and 4, and the sampling
    distribution at temperatures 1 and 0.7, top-k 5 and top-p 0.8 (about a minute)."""
    assert_lossless(factory("low_precision", format="int8"))


@pytest.mark.parametrize("verifier", [True, False])
def test_own_cache_equals_a_fresh_forward_after_every_step_and_an_exact_copy_is_always_accepted(verifier):
    """format float32 is the target itself: every greedy draft is accepted, and the drafter's
    cache, rolled back after each step to what was committed, equals a fresh forward."""
    target = tiny_llama(0, vocab_size=12, eos_token_id=11)
    wrapped = []

    def make(model, verifier=None):
        inner = build("low_precision", model, verifier if verifier_given else None, format="float32", max_tokens=4)
        wrapped.append(StoreChecked(inner, model))
        return wrapped[-1]

    verifier_given = verifier
    check_greedy_identity(make, target, PROMPTS, max_new_tokens=20)
    assert sum(drafter.checks for drafter in wrapped) > 20
    decoder = SpeculativeDecoder(HFVerifier(target), build("low_precision", target, None, format="float32"),
                                 RejectionSampling())
    stats = decoder.generate([4, 4, 4, 4, 7, 2], SamplingParams(max_new_tokens=40)).stats
    assert stats.draft_tokens > 10 and stats.accepted_draft_tokens == stats.draft_tokens


class NoRollback(LowPrecisionDrafter):
    """Broken: keeps the entries of every draft token it fed, accepted or not."""

    def observe(self, outcome):
        super().observe(outcome)
        self.length = self._base + self._in_cache


@pytest.mark.parametrize("broken", [False, True])
def test_a_drafter_that_keeps_rejected_entries_is_caught_by_the_cache_check(broken):
    """Exact float32 layers with a perturbed head, so that some drafts are rejected: the correct
    drafter's cache matches a fresh forward after every step, one that keeps the entries of
    rejected draft tokens fails at the first rejection."""
    target = tiny_llama(0, vocab_size=12, eos_token_id=11)
    generator = torch.Generator().manual_seed(0)
    noisy_head = target.lm_head.weight.detach() + torch.randn(target.lm_head.weight.shape, generator=generator) * 0.3

    def make(model):
        drafter = build("low_precision", model, None, format="float32", max_tokens=4)
        drafter.stack.head = lambda x: torch.nn.functional.linear(x, noisy_head)
        if broken:
            drafter.__class__ = NoRollback
        return StoreChecked(drafter, model)

    if not broken:
        check_greedy_identity(make, target, PROMPTS, max_new_tokens=20)
        return
    with pytest.raises(GenerationError, match="drafter's cache layer .* differs from a fresh forward"):
        check_greedy_identity(make, target, PROMPTS, max_new_tokens=20)


def tiny_vocab(size: int = 7) -> DraftVocab:
    """A truncated draft vocabulary of a vocabulary-12 tiny model: `size` ids, EOS (11) included."""
    return DraftVocab(torch.tensor([11, 0, 2, 4, 6, 8, 10, 1, 3][:size]), 12)


def with_vocab(model, verifier, vocab, **params):
    drafter = build("low_precision", model, verifier, format="int8", **params)
    stack = drafter.stack
    rows = vocab.token_ids
    stack.head = lambda x: torch.nn.functional.linear(x, model.lm_head.weight[rows])
    drafter.vocab = vocab
    return drafter


def test_a_truncated_draft_vocabulary_stays_lossless_and_q_is_zero_outside_it():
    vocab = tiny_vocab()
    assert_lossless(lambda model, verifier: with_vocab(model, verifier, vocab), quick=True)
    target = tiny_llama(0, vocab_size=12, init_std=0.1)
    drafter = with_vocab(target, None, vocab)
    decoder = SpeculativeDecoder(HFVerifier(target, eos_token_ids=()), drafter, RejectionSampling())
    drafts = []
    original = drafter.propose
    drafter.propose = lambda context: drafts.append(original(context)) or drafts[-1]
    decoder.generate([1, 2, 3], SamplingParams(temperature=1.0, max_new_tokens=12, seed=3))
    outside = torch.ones(12, dtype=torch.bool)
    outside[vocab.token_ids] = False
    sampled = [draft for draft in drafts if draft.q is not None]
    assert sampled and all(float(draft.q[:, outside].abs().max()) == 0.0 for draft in sampled)
    assert all(set(draft.tokens.tolist()) <= set(vocab.token_ids.tolist()) for draft in sampled)


def test_a_q_that_is_not_the_truncated_distribution_fails_the_sampling_check():
    vocab = tiny_vocab(5)
    target = tiny_llama(0, vocab_size=12, init_std=0.1)

    def make(model):
        drafter = with_vocab(model, None, vocab)
        original = drafter.propose

        def propose(context):  # uniform q over the whole vocabulary: not what the token was drawn from
            draft = original(context)
            if draft.q is None or not draft.num_nodes:
                return draft
            return Draft.chain(draft.tokens, torch.full((draft.num_nodes, 12), 1.0 / 12))

        drafter.propose = propose
        return drafter

    with pytest.raises(AssertionError, match="does not match plain sampling"):
        check_sampling_distribution(make, target, SamplingParams(temperature=1.0), num_samples=600)




def test_the_harness_fails_a_broken_policy_with_this_drafter():
    """A policy that accepts every draft token outputs the draft's distribution. The int8 copy of
    a tiny model samples so nearly like the target that 400 samples cannot tell (which is why it
    drafts well), so the control drafts with one of the two layers skipped: q clearly differs
    from p, and the same check that passes the correct policy must fail the broken one."""
    make = factory("low_precision", format="int8", skip=[1])
    assert_lossless(make, quick=True)
    with pytest.raises(AssertionError, match="does not match plain sampling"):
        assert_lossless(make, policy=AcceptsEverythingWhenSampling(), quick=True)


def test_plain_decoding_reference_is_unchanged_by_an_idle_drafter():
    """A drafter that judged drafting not worth it proposes nothing, yet keeps its cache in step."""
    target = tiny_llama(0, vocab_size=12, eos_token_id=11)
    drafter = build("low_precision", target, None, format="float32", draft_cost=5.0)  # never pays
    decoder = SpeculativeDecoder(HFVerifier(target), drafter, RejectionSampling())
    plain = SpeculativeDecoder(HFVerifier(target), NoDrafter(), RejectionSampling())
    params = SamplingParams(max_new_tokens=30)
    result = decoder.generate([1, 2, 3], params)
    assert result.tokens == plain.generate([1, 2, 3], params).tokens
    # it still probes now and then (`ChainSizer.worth_drafting`: until a first-token acceptance
    # rate is known, and periodically after), and keeps what a probe drafted (that cost is sunk)
    assert result.stats.draft_tokens <= result.stats.steps // 4


def test_a_drafter_dearer_than_a_plain_step_explores_ever_more_rarely():
    """A copy whose forward costs five plain steps never pays: over 240 steps it explores about
    log2(240 / 8) times (gaps 8, 16, 32, 64, 128), where a fixed gap of 8 would explore 30 times."""
    target = tiny_llama(0, vocab_size=12, eos_token_id=None)
    drafter = build("low_precision", target, None, format="float32", draft_cost=5.0)
    result = SpeculativeDecoder(HFVerifier(target), drafter, RejectionSampling()).generate(
        [1, 2, 3], SamplingParams(max_new_tokens=240))
    assert result.stats.steps >= 200
    assert result.stats.draft_tokens <= 7


class EveryOtherStep(NoDrafter):
    """Drafts a fixed chain on even steps, nothing on odd ones (the fallback then asks the next)."""

    def propose(self, context):
        if context.step % 2:
            return Draft.empty()
        return Draft.chain([(context.tokens[-1] + 1) % 11, 3])


def test_inside_a_fallback_its_cache_follows_steps_where_another_drafter_was_used():
    from specdec import FallbackDrafter

    target = tiny_llama(0, vocab_size=12, eos_token_id=11)

    def make(model, verifier):
        inner = build("low_precision", model, verifier, format="float32", max_tokens=3)
        return FallbackDrafter([EveryOtherStep(), StoreChecked(inner, model)])

    made = []
    check_greedy_identity(lambda model, verifier: made.append(make(model, verifier)) or made[-1], target,
                          PROMPTS, max_new_tokens=20)
    assert all(fallback.used[0] and fallback.used[1] for fallback in made if sum(fallback.used) > 4)
