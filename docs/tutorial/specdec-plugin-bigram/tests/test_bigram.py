import pytest
from specdec.testing import assert_lossless, check_plugin

from specdec_plugin_bigram.drafter import BigramDrafter


def make_drafter(target):
    return BigramDrafter(num_tokens=3, min_count=1)


def test_specdec_discovers_the_plugin():
    check_plugin("specdec_plugin_bigram", [("drafter", "bigram")])


def test_bigram_drafter_passes_the_quick_check():
    assert_lossless(make_drafter, quick=True)


@pytest.mark.slow
def test_bigram_drafter_passes_the_full_check():
    assert_lossless(make_drafter)
