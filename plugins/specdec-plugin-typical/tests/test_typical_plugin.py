"""The plugin as specdec sees it: installed, registered as LOSSY, flagged by the CLI and pipelines."""

import logging
from pathlib import Path

import pytest

from specdec import ConfigError, Pipeline, load_plugins, load_yaml, main, validate_pipeline
from specdec.testing import check_plugin, save_tiny_model

import specdec_plugin_typical
from specdec_plugin_typical.policy import TypicalAcceptance

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_specdec_finds_the_installed_plugin_and_registers_typical_as_lossy():
    loaded = check_plugin("specdec_plugin_typical", [("acceptance", "typical")],
                          distribution="specdec-plugin-typical")
    component = loaded.registry.get("acceptance", "typical")
    assert component.lossless is False
    assert component.params_model is specdec_plugin_typical.TypicalParams


def test_the_plugins_command_flags_it_as_lossy(capsys):
    assert main(["plugins"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if " typical " in line]
    assert "[LOSSY under sampling]" in line


def test_the_reference_defaults_are_not_swapped():
    params = specdec_plugin_typical.TypicalParams()
    assert (params.epsilon, params.delta) == (0.09, 0.3)
    policy = TypicalAcceptance()
    assert (policy.epsilon, policy.delta) == (0.09, 0.3)


def test_every_example_pipeline_validates():
    registry = load_plugins().registry
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert len(files) == 2
    if "medusa" not in registry.components["drafter"]:
        pytest.skip("the examples draft with Medusa heads: install specdec-plugin-medusa")
    for path in files:
        data, text = load_yaml(path)
        validated = validate_pipeline(data, registry, str(path), text)
        assert validated.spec.acceptance.type == "typical"
        assert validated.spec.sampling.temperature > 0


@pytest.mark.parametrize("params, message", [
    ({"epsilon": 0}, "acceptance.params.epsilon: must be > 0"),
    ({"epsilon": 1.5}, "acceptance.params.epsilon: must be <= 1"),
    ({"delta": -1}, "acceptance.params.delta: must be > 0"),
    ({"alpha": 0.3}, "unknown field"),
])
def test_bad_params_are_reported(params, message):
    with pytest.raises(ConfigError, match=message):
        validate_pipeline({"acceptance": {"type": "typical", "params": params}}, load_plugins().registry, "p.yaml")


def test_a_pipeline_with_typical_acceptance_warns_that_it_is_lossy(tmp_path, caplog):
    model = save_tiny_model(tmp_path / "tiny")
    with caplog.at_level(logging.WARNING, logger="specdec.pipeline"):
        pipeline = Pipeline.from_dict({"target": {"model": model}, "acceptance": {"type": "typical"},
                                       "sampling": {"temperature": 0.8, "max_new_tokens": 5, "seed": 0}})
    assert not pipeline.lossless
    assert "'typical' is LOSSY" in caplog.text
    assert isinstance(pipeline.policy, TypicalAcceptance)
    assert len(pipeline.generate("hello").token_ids) <= 5
