"""The plugin as specdec sees it: installed, registered, its YAML examples valid, its commands there."""

from pathlib import Path

import pytest

from specdec import ConfigError, Pipeline, load_plugins, load_yaml, main, validate_pipeline
from specdec.testing import check_plugin

import specdec_plugin_medusa
from specdec_plugin_medusa.heads import CONFIG_FILE, WEIGHTS_FILE, read_config, shipped_heads

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_specdec_finds_the_installed_plugin_and_its_drafter():
    loaded = check_plugin("specdec_plugin_medusa", [("drafter", "medusa")],
                          distribution="specdec-plugin-medusa", commands=True)
    assert loaded.registry.get("drafter", "medusa").params_model is specdec_plugin_medusa.MedusaParams


def test_every_example_pipeline_validates():
    registry = load_plugins().registry
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert [path.name for path in files] == [
        "medusa-adaptive.yaml", "medusa-bf16.yaml", "medusa-custom-tree.yaml", "medusa-greedy.yaml",
        "medusa-sampling.yaml"]
    for path in files:
        data, text = load_yaml(path)
        validated = validate_pipeline(data, registry, str(path), text)
        assert validated.spec.drafter.type == "medusa"


@pytest.mark.parametrize("block, message", [
    ({"tree": [[0], [1, 1]]}, "needs its prefix [1]"),
    ({"tree": "wide"}, "drafter.params.tree"),
    ({"tree": "chain", "num_nodes": 4}, "num_nodes applies only to tree 'auto'"),
    ({"num_nodes": 0}, "must be >= 1"),
    ({"head": "default"}, "did you mean 'heads'"),
])
def test_bad_params_are_reported_with_their_place(block, message):
    data = {"drafter": {"type": "medusa", "params": block}}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_pipeline(data, load_plugins().registry, "p.yaml")


def test_the_shipped_default_heads_are_small_and_describe_their_training():
    folder = shipped_heads()["default"]
    assert (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
    assert (folder / WEIGHTS_FILE).stat().st_size < 8 * 2**20  # frozen LM head: only residual blocks
    config = read_config(folder)
    assert config.target["name"] == "SmolLM2-135M-Instruct"
    assert config.target["architecture"] == "LlamaForCausalLM"
    assert (config.hidden_size, config.vocab_size, config.own_lm_head) == (576, 49152, False)
    assert config.tree and config.accuracy["per_rank"] and config.training["steps"] > 0


def test_the_medusa_commands_are_added_to_the_cli(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["medusa", "--help"])
    assert stopped.value.code == 0
    output = capsys.readouterr().out
    for command in ("train", "distill", "tree"):
        assert command in output


def test_tree_command_derives_trees_from_the_stored_accuracy(capsys):
    assert main(["medusa", "tree", "--heads", "default", "--nodes", "1", "8"]) == 0
    output = capsys.readouterr().out
    assert "1 nodes, expected" in output and "8 nodes, expected" in output
    assert "tree: [[0]]" in output


@pytest.mark.slow
def test_the_shipped_heads_draft_accepted_tokens_for_the_default_model_losslessly():
    greedy = {"sampling": {"temperature": 0, "max_new_tokens": 48}}
    medusa = Pipeline.from_dict({**greedy, "drafter": {"type": "medusa", "params": {"heads": "default"}}})
    plain = Pipeline.from_dict(greedy, model=medusa.model, tokenizer=medusa.tokenizer)
    prompt = [{"role": "user", "content": "Describe how a bicycle works."}]
    result = medusa.generate(prompt)
    assert result.token_ids == plain.generate(prompt).token_ids
    assert result.stats.mean_accepted_tokens > 1.3
