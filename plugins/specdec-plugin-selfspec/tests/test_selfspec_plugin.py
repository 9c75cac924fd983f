"""The plugin as specdec sees it: installed, registered, its YAML examples valid, bad params
reported where they are, pipelines built from YAML decode like plain decoding."""

from pathlib import Path

import pytest

from specdec import ConfigError, Pipeline, load_plugins, load_yaml, main, validate_pipeline
from specdec.testing import check_plugin, save_tiny_model

import specdec_plugin_selfspec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_specdec_finds_the_installed_plugin_and_its_drafters():
    loaded = check_plugin("specdec_plugin_selfspec", [("drafter", "low_precision"), ("drafter", "layer_skip")],
                          distribution="specdec-plugin-selfspec", commands=True)
    registry = loaded.registry
    assert registry.get("drafter", "low_precision").params_model is specdec_plugin_selfspec.LowPrecisionParams
    assert registry.get("drafter", "layer_skip").params_model is specdec_plugin_selfspec.LayerSkipParams


def test_every_example_pipeline_validates():
    registry = load_plugins().registry
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert [path.name for path in files] == [
        "layer-skip-auto.yaml", "layer-skip-fixed.yaml", "layer-skip-int8.yaml",
        "low-precision-after-prompt-lookup.yaml", "low-precision-sampling.yaml", "low-precision-vocab.yaml",
        "low-precision.yaml", "merge-prompt-lookup-low-precision.yaml"]
    for path in files:
        data, text = load_yaml(path)
        validated = validate_pipeline(data, registry, str(path), text)
        assert validated.spec.drafter.type in ("low_precision", "layer_skip", "fallback", "merge")


@pytest.mark.parametrize("kind, block, message", [
    ("low_precision", {"format": "int4"}, "drafter.params.format"),
    ("low_precision", {"skip": [3, 3]}, "a layer is listed twice"),
    ("low_precision", {"vocab_size": 4}, "vocab_size: must be >= 16"),
    ("low_precision", {"formats": "int8"}, "did you mean 'format'"),
    ("layer_skip", {"skip": "some"}, "drafter.params.skip"),
    ("layer_skip", {"skip": [-1]}, "0-based"),
    ("layer_skip", {"max_skip": 1.0}, "max_skip: must be < 1"),
    ("layer_skip", {"weights": "int4"}, "drafter.params.weights"),
])
def test_bad_params_are_reported_with_their_place(kind, block, message):
    with pytest.raises(ConfigError, match=message):
        validate_pipeline({"drafter": {"type": kind, "params": block}}, load_plugins().registry, "p.yaml")


@pytest.mark.parametrize("kind, block, message", [
    ("low_precision", {"skip": [7]}, r"drafter.params.skip: the target has 2 layers \(0-1\); \[7\] do not exist"),
    ("low_precision", {"skip": [0, 1]}, "skipping every layer"),
    ("low_precision", {"vocab_size": 1024}, "49152-token vocabulary.*specdec selfspec vocab"),
    ("layer_skip", {"skip": [5]}, "the target has 2 layers"),
])
def test_params_that_do_not_fit_the_target_fail_the_build_with_what_to_change(tmp_path, kind, block, message):
    model = save_tiny_model(tmp_path / "tiny")
    with pytest.raises(Exception, match=message):
        Pipeline.from_dict({"target": {"model": model}, "drafter": {"type": kind, "params": block}})


@pytest.mark.parametrize("drafter", [
    {"type": "low_precision", "params": {"format": "int8", "node_cost": 0.1}},
    {"type": "layer_skip", "params": {"skip": [1], "node_cost": 0.1, "draft_cost": 0.3}},
])
def test_a_pipeline_from_yaml_decodes_like_plain_decoding(tmp_path, drafter):
    model = save_tiny_model(tmp_path / "tiny", num_layers=2)
    spec = {"target": {"model": model}, "sampling": {"temperature": 0, "max_new_tokens": 24}}
    plain = Pipeline.from_dict(spec)
    pipeline = Pipeline.from_dict({**spec, "drafter": drafter}, model=plain.model, tokenizer=plain.tokenizer)
    prompt = "abc abc abc abc"
    assert pipeline.generate(prompt).token_ids == plain.generate(prompt).token_ids
    results = pipeline.generate_batch(["hello hello", "abc abc abc", "xyz"])  # batched, one drafter each
    assert [result.token_ids for result in results] == [plain.generate(p).token_ids
                                                        for p in ["hello hello", "abc abc abc", "xyz"]]


def test_the_formats_command_says_what_auto_picks_here_and_the_times_it_picks_by(capsys, tmp_path):
    import json

    from specdec.testing import save_tiny_model

    assert main(["selfspec", "formats", "--model", save_tiny_model(tmp_path / "tiny")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"native_bfloat16", "quantized_engine", "auto_format_for_float32_target"} <= set(report)
    assert {"bfloat16", "float32"} <= set(report["one_layer_microseconds"])
    if not report["native_bfloat16"]:
        assert report["auto_format_for_float32_target"] == "int8"
