"""`assert_lossless` itself: it demands draft activity, and its quick preset still checks drafts."""

import time

import pytest

from specdec import RejectionSampling
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.testing import AcceptsEverythingWhenSampling, assert_lossless, perturbed_copy


def test_a_drafter_that_never_drafts_cannot_pass_as_lossless():
    with pytest.raises(AssertionError, match=r"NoDrafter proposed no draft tokens in \d+ steps"):
        assert_lossless(lambda target: NoDrafter(), quick=True)




def test_the_quick_preset_passes_a_lossless_drafter_and_fails_a_broken_policy():
    make = lambda target: DraftModelDrafter(perturbed_copy(target, 0.05), 3)  # noqa: E731
    started = time.perf_counter()
    assert_lossless(make, quick=True)
    assert time.perf_counter() - started < 120  # a preset for iterating, not the full check
    with pytest.raises(AssertionError, match="AcceptsEverythingWhenSampling does not match plain sampling"):
        assert_lossless(make, policy=AcceptsEverythingWhenSampling(), quick=True)


class SlotRecorder(NoDrafter):
    """Records the verifier it was built with and, each step, whether `context.slot` is the slot
    that verifier's cache holds this sequence in (its committed length is the tokens minus the
    pending root, or 0 on the first step)."""

    def __init__(self, verifier):
        self.verifier, self.seen = verifier, []

    def propose(self, context):
        cache = self.verifier.cache
        expected = 0 if context.step == 0 else len(context.tokens) - 1
        self.seen.append(cache.lengths[context.slot] == expected)
        return super().propose(context)


def test_factories_with_a_verifier_parameter_get_the_verifier_of_their_drafts_and_their_slot():
    from specdec.testing import build_drafter, check_batched_greedy_identity, tiny_llama
    from specdec.verifiers.hf import HFVerifier

    target = tiny_llama(0, vocab_size=12, eos_token_id=11)
    verifier = HFVerifier(target)
    assert build_drafter(lambda model, verifier: SlotRecorder(verifier), target, verifier).verifier is verifier
    assert isinstance(build_drafter(lambda model: NoDrafter(), target, verifier), NoDrafter)
    made = []

    def make(model, verifier):
        made.append(SlotRecorder(verifier))
        return made[-1]

    # batch sizes 2 and 4 with requests of different lengths: sequences move between slots
    check_batched_greedy_identity(make, target, [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], [3, 1, 3]],
                                  max_new_tokens=12)
    seen = [ok for drafter in made for ok in drafter.seen]
    assert len(seen) > 20 and all(seen)


def test_a_greedy_replay_takes_exactly_the_steps_of_the_real_generation():
    """`replay_greedy` walks the plain output instead of running the target: the same drafter
    must accept the same tokens at every step as in a real speculative generation."""
    from specdec import SamplingParams, StepScheduler
    from specdec.testing import replay_greedy, tiny_llama
    from specdec.verifiers.hf import HFVerifier

    target = tiny_llama(0, vocab_size=12, eos_token_id=11)
    make = lambda: DraftModelDrafter(perturbed_copy(target, 0.3, seed=1), 3)  # noqa: E731
    prompt = [1, 5, 3, 7, 2]
    scheduler = StepScheduler(HFVerifier(target), RejectionSampling(), [make()], max_batch_size=1)
    real = scheduler.generate_batch([prompt], SamplingParams(temperature=0.0, max_new_tokens=40,
                                                             stop_token_ids=()))[0]
    replay = replay_greedy(make(), prompt, real.tokens)
    assert replay.stats.steps == real.stats.steps
    assert replay.stats.accepted_length_histogram == real.stats.accepted_length_histogram
    assert replay.stats.draft_tokens == real.stats.draft_tokens
    assert 0 < replay.stats.accepted_draft_tokens < replay.stats.draft_tokens  # some accepted, some not
    assert replay.modeled_speedup > 0 and replay.drafted_steps == replay.steps - 1  # the last step has 1 left


def test_a_greedy_replay_of_a_drafter_that_guesses_wrong_is_plain_decoding():
    from specdec import Draft
    from specdec.testing import replay_greedy

    class Wrong(NoDrafter):
        def propose(self, context):
            return Draft.chain([99, 98])

    replay = replay_greedy(Wrong(), [1, 2, 3], [4, 5, 6, 7, 8])
    assert replay.steps == 5 and replay.mean_accepted_tokens == 1.0 and replay.stats.accepted_draft_tokens == 0
