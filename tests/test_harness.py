"""`assert_lossless` itself: it demands draft activity, and its quick preset still checks drafts."""

import time

import pytest

from specdec import RejectionSampling
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.testing import AlwaysAccept, assert_lossless, perturbed_copy


def test_a_drafter_that_never_drafts_cannot_pass_as_lossless():
    with pytest.raises(AssertionError, match=r"NoDrafter proposed no draft tokens in \d+ steps"):
        assert_lossless(lambda target: NoDrafter(), quick=True)


class AcceptsEverythingWhenSampling(RejectionSampling):
    """Exact at temperature 0, so only the sampling checks can catch it."""

    def accept(self, logits, draft, params, rng):
        if params.greedy:
            return super().accept(logits, draft, params, rng)
        return AlwaysAccept().accept(logits, draft, params, rng)


def test_the_quick_preset_passes_a_lossless_drafter_and_fails_a_broken_policy():
    make = lambda target: DraftModelDrafter(perturbed_copy(target, 0.05), 3)  # noqa: E731
    started = time.perf_counter()
    assert_lossless(make, quick=True)
    assert time.perf_counter() - started < 120  # a preset for iterating, not the full check
    with pytest.raises(AssertionError, match="AcceptsEverythingWhenSampling does not match plain sampling"):
        assert_lossless(make, policy=AcceptsEverythingWhenSampling(), quick=True)
