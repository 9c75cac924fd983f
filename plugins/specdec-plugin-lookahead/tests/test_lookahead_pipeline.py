"""The example pipelines' drafters end to end on a tiny local model: `node_cost: auto` measures
its cost curve, output equals plain decoding alone, in a batch and inside `fallback`."""

from pathlib import Path

import pytest

from specdec import Pipeline, load_yaml
from specdec.testing import save_tiny_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROMPTS = ["the cat sat on the mat. the cat sat on the", "abc abc abc abc", "tides"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=3)


def pipeline(model_dir, drafter):
    return Pipeline.from_dict({"target": {"model": model_dir}, "drafter": drafter,
                               "sampling": {"max_new_tokens": 40, "stop_token_ids": []}})


@pytest.mark.parametrize("example", sorted(path.name for path in EXAMPLES.glob("*.yaml")))
def test_each_example_drafter_generates_what_plain_decoding_generates(model_dir, example):
    drafter = load_yaml(EXAMPLES / example)[0]["drafter"]
    plain = pipeline(model_dir, {"type": "none"})
    expected = [plain.generate(prompt).token_ids for prompt in PROMPTS]
    speculative = pipeline(model_dir, drafter)
    assert [speculative.generate(prompt).token_ids for prompt in PROMPTS] == expected
    assert [result.token_ids for result in speculative.generate_batch(PROMPTS)] == expected
    composite = pipeline(model_dir, {"type": "fallback", "params": {"drafters": [drafter]}})
    assert [composite.generate(prompt).token_ids for prompt in PROMPTS] == expected
    sampled = speculative.generate(PROMPTS[0], temperature=0.8, seed=5)
    assert len(sampled.token_ids) == 40
