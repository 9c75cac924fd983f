"""The tutorial's plugin, installed with pip from docs/tutorial (as .ci/setup --test does), is
discovered through its entry point and usable from its YAML file."""

from pathlib import Path

import pytest

from specdec import Pipeline
from specdec.plugins import load_plugins
from specdec.testing import save_tiny_model

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def installed():
    loaded = load_plugins()
    if "bigram" not in loaded.registry.components["drafter"]:
        pytest.fail("the tutorial plugin is not installed: pip install -e docs/tutorial/specdec-plugin-bigram "
                    "(.ci/setup --test does it)")
    return loaded


def test_tutorial_pipeline_runs_from_yaml_and_matches_plain_decoding(installed, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = save_tiny_model(tmp_path / "model", seed=6)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    bigram = Pipeline.from_yaml(DOCS / "tutorial" / "specdec-plugin-bigram" / "bigram.yaml", plugins=installed,
                                model=model, tokenizer=tokenizer)
    plain = Pipeline.from_dict({"drafter": {"type": "none"}}, plugins=installed, model=model, tokenizer=tokenizer)
    prompt = "abab abab abab abab"
    result = bigram.generate(prompt, max_new_tokens=40)
    assert result.token_ids == plain.generate(prompt, max_new_tokens=40).token_ids
    assert type(bigram.drafter).__name__ == "BigramDrafter"
