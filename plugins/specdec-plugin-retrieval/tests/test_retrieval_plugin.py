"""The plugin as specdec sees it: installed, registered, configurable from YAML and the CLI."""

from pathlib import Path

import pytest

from specdec import ConfigError, load_plugins, load_yaml, validate_pipeline, validated_pipeline
from specdec.testing import check_plugin

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_specdec_finds_the_plugin_and_its_drafters():
    check_plugin("specdec_plugin_retrieval", [("drafter", "prompt_lookup"), ("drafter", "rest")],
                 distribution="specdec-plugin-retrieval", commands=True)


def test_every_example_pipeline_validates():
    registry = load_plugins().registry
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert [path.name for path in files] == [
        "combined.yaml", "prompt_lookup.yaml", "prompt_lookup_sam.yaml", "prompt_lookup_tree.yaml",
        "prompt_lookup_tree_bf16.yaml", "rest.yaml"]
    for path in files:
        data, text = load_yaml(path)
        validated = validate_pipeline(data, registry, str(path), text)
        assert validated.spec.drafter.type in ("prompt_lookup", "rest", "fallback")


@pytest.mark.parametrize("params, message", [
    ({"min_ngram": 5, "max_ngram": 3}, "min_ngram (5) must be <= max_ngram (3)"),
    ({"selection": "oldest"}, "drafter.params.selection: must be one of"),
    ({"num_tokens": 0}, "drafter.params.num_tokens: must be >= 1"),
    ({"max_branch": 2}, "did you mean 'max_branches'"),
    ({"node_cost": "fast"}, "drafter.params.node_cost"),
    ({"node_cost": -0.1}, "drafter.params.node_cost"),
    ({"matcher": "suffix_array"}, "drafter.params.matcher: must be one of"),
    ({"matcher": "suffix_automaton", "max_ngram": 8}, "max_ngram limits the n-gram matcher only"),
])
def test_prompt_lookup_params_are_checked(params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_pipeline({"drafter": {"type": "prompt_lookup", "params": params}}, load_plugins().registry)


def test_rest_needs_a_store_and_a_sane_span():
    registry = load_plugins().registry
    with pytest.raises(ConfigError, match="drafter.params.store: required field is missing"):
        validate_pipeline({"drafter": {"type": "rest"}}, registry)
    with pytest.raises(ConfigError, match=r"min_span \(8\) must be <= max_span \(4\)"):
        validate_pipeline({"drafter": {"type": "rest", "params": {"store": "s", "min_span": 8, "max_span": 4}}},
                          registry)


def test_the_plugin_module_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, specdec_plugin_retrieval; from specdec import load_plugins; load_plugins(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_the_plugin_offers_prompt_lookup_as_the_default_pipeline():
    loaded = load_plugins()
    assert ("specdec_plugin_retrieval", {"name": "default", "drafter": {"type": "prompt_lookup"}}) \
        in loaded.default_pipelines
    assert validated_pipeline(None, loaded).spec.drafter.type == "prompt_lookup"
