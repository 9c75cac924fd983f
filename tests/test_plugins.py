"""Plugin discovery and registration: built-ins use the same hooks; broken plugins are isolated."""

import importlib.metadata
import types

import pytest
from pydantic import BaseModel

from specdec import hookimpl
from specdec.plugins import DEFAULT_PLUGINS, load_plugins


class Params(BaseModel):
    size: int = 1


def plugin(**hooks):
    """A throwaway plugin module whose hook implementations are the given functions."""
    module = types.ModuleType("throwaway")
    for name, function in hooks.items():
        function.__name__ = name
        setattr(module, name, hookimpl(function))
    return module


def test_builtins_register_through_the_hooks():
    loaded = load_plugins(entry_points=False)
    components = loaded.registry.components
    assert set(components["drafter"]) >= {"none", "draft_model"}
    assert components["drafter"]["draft_model"].plugin == "specdec.drafters"
    assert components["verifier"]["hf"].plugin == "specdec.verifiers"
    assert {name: c.lossless for name, c in components["acceptance"].items()} == {"greedy": True, "rejection": True}
    assert [info.name for info in loaded.plugins] == list(DEFAULT_PLUGINS)
    assert not loaded.failures


def test_a_third_party_plugin_adds_components():
    def register_drafters(register):
        register("echo", Params, lambda context, params: None, description="test")

    def register_acceptance_policies(register):
        register("coin", Params, lambda context, params: None, lossless=False)

    loaded = load_plugins([("my_plugin", plugin(register_drafters=register_drafters,
                                                register_acceptance_policies=register_acceptance_policies))],
                          entry_points=False)
    assert loaded.registry.get("drafter", "echo").plugin == "my_plugin"
    assert loaded.registry.get("acceptance", "coin").lossless is False
    assert "my_plugin" in [info.name for info in loaded.plugins]


def test_a_plugin_that_raises_while_registering_does_not_take_others_down():
    def register_drafters(register):
        raise RuntimeError("weights not found")

    def good(register):
        register("fine", Params, lambda context, params: None)

    loaded = load_plugins([("broken", plugin(register_drafters=register_drafters)),
                           ("healthy", plugin(register_drafters=good))], entry_points=False)
    assert "fine" in loaded.registry.components["drafter"]
    assert "draft_model" in loaded.registry.components["drafter"]
    [failure] = loaded.failures
    assert failure.name == "broken" and failure.stage == "registration"
    assert "RuntimeError: weights not found" in str(failure)


def test_a_misspelt_hook_is_reported_with_a_suggestion():
    def register_drafter(register):  # missing the final s
        pass

    loaded = load_plugins([("typo", plugin(register_drafter=register_drafter))], entry_points=False)
    [failure] = loaded.failures
    assert failure.stage == "hooks" and "did you mean 'register_drafters'" in failure.error


@pytest.mark.parametrize("arguments, message", [
    (("Bad-Name", Params), "lowercase"),
    (("fine", dict), "pydantic BaseModel"),
    (("none", Params), "registered twice: by plugin 'specdec.drafters' and by plugin 'bad'"),
])
def test_invalid_registrations_are_reported(arguments, message):
    def register_drafters(register):
        register(*arguments, lambda context, params: None)

    loaded = load_plugins([("bad", plugin(register_drafters=register_drafters))], entry_points=False)
    [failure] = loaded.failures
    assert message in failure.error


def test_a_policy_must_say_whether_it_is_lossless():
    def register_acceptance_policies(register):
        register("vague", Params, lambda context, params: None)

    loaded = load_plugins([("vague", plugin(register_acceptance_policies=register_acceptance_policies))],
                          entry_points=False)
    assert "lossless=True or lossless=False" in loaded.failures[0].error


def test_an_entry_point_that_fails_to_import_is_reported(monkeypatch):
    broken = importlib.metadata.EntryPoint("ghost", "specdec_no_such_module_xyz", "specdec")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    loaded = load_plugins()
    [failure] = loaded.failures
    assert failure.name == "ghost" and failure.stage == "import"
    assert "ModuleNotFoundError" in failure.error
    assert "draft_model" in loaded.registry.components["drafter"]


def test_specdec_load_plugins_selects_entry_points(monkeypatch):
    broken = importlib.metadata.EntryPoint("ghost", "specdec_no_such_module_xyz", "specdec")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    monkeypatch.setenv("SPECDEC_LOAD_PLUGINS", "")
    assert not load_plugins().failures
    monkeypatch.setenv("SPECDEC_LOAD_PLUGINS", "ghost")
    assert load_plugins().failures[0].name == "ghost"


def test_a_plugin_adds_a_verifier():
    def register_verifiers(register):
        register("mirror", Params, lambda context, params: None, description="test verifier")

    loaded = load_plugins([("verifying", plugin(register_verifiers=register_verifiers))], entry_points=False)
    assert loaded.registry.get("verifier", "mirror").plugin == "verifying"


def test_a_plugin_adds_a_cli_command(capsys):
    from specdec.cli import main

    def register_commands(subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)

    loaded = load_plugins([("greeter", plugin(register_commands=register_commands))], entry_points=False)
    assert main(["hello", "--name", "specdec"], plugins=loaded) == 0
    assert capsys.readouterr().out == "hello specdec\n"


def test_a_command_that_fails_to_register_does_not_break_the_cli(capsys):
    from specdec.cli import main

    def register_commands(subparsers):
        raise RuntimeError("boom")

    loaded = load_plugins([("noisy", plugin(register_commands=register_commands))], entry_points=False)
    assert main(["plugins"], plugins=loaded) == 0
    assert "plugin 'noisy' failed to add its commands: RuntimeError: boom" in capsys.readouterr().err
