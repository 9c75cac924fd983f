from specdec.testing import assert_lossless, check_plugin

from specdec_plugin_bigram.drafter import BigramDrafter


def test_specdec_discovers_the_plugin():
    check_plugin("specdec_plugin_bigram", [("drafter", "bigram")])


def test_bigram_drafter_is_lossless():
    assert_lossless(lambda target: BigramDrafter(num_tokens=3, min_count=1))
