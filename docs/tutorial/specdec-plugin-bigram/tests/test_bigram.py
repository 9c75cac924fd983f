from specdec.plugins import load_plugins
from specdec.testing import assert_lossless

from specdec_plugin_bigram.drafter import BigramDrafter


def test_specdec_discovers_the_plugin():
    loaded = load_plugins()
    assert loaded.registry.get("drafter", "bigram").plugin == "specdec_plugin_bigram"
    assert not [failure for failure in loaded.failures if failure.name == "specdec_plugin_bigram"]


def test_bigram_drafter_is_lossless():
    assert_lossless(lambda target: BigramDrafter(num_tokens=3, min_count=1))
