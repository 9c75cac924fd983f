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


def test_a_hook_with_a_misspelt_argument_is_reported_not_raised():
    def register_drafters(registr):  # pluggy refuses arguments the hook does not have
        pass

    def good(register):
        register("fine", Params, lambda context, params: None)

    loaded = load_plugins([("typo", plugin(register_drafters=register_drafters)),
                           ("healthy", plugin(register_drafters=good))], entry_points=False)
    [failure] = loaded.failures
    assert failure.name == "typo" and failure.stage == "hooks"
    assert "PluginValidationError" in failure.error and "registr" in failure.error
    assert not loaded.manager.has_plugin("typo")
    assert "fine" in loaded.registry.components["drafter"]


def test_hooks_pass_an_implementation_only_the_arguments_it_declares():
    from specdec.plugins import call_hook

    calls = []

    def register_drafters():  # declares none of the hook's arguments: pluggy allows that
        calls.append("called")

    def register_verifiers(register):
        register("mirror", Params, lambda context, params: None)

    loaded = load_plugins([("quiet", plugin(register_drafters=register_drafters)),
                           ("today", plugin(register_verifiers=register_verifiers))], entry_points=False)
    assert calls == ["called"] and not loaded.failures
    # the day a hook gains a keyword, a plugin written before it is called as it always was
    [implementation] = [impl for impl in loaded.manager.hook.register_verifiers.get_hookimpls()
                        if impl.plugin_name == "today"]
    later = load_plugins(entry_points=False).registry
    call_hook(implementation, register=later.register_callback("verifier", "today"), future_keyword=1)
    assert later.get("verifier", "mirror").plugin == "today"


def test_the_default_pipeline_comes_from_a_plugin_or_is_plain_decoding(capsys):
    from specdec.cli import DEFAULT_PIPELINE, default_pipeline_data

    assert default_pipeline_data(load_plugins(entry_points=False)) == DEFAULT_PIPELINE
    assert DEFAULT_PIPELINE["drafter"] == {"type": "none"}
    assert "no installed plugin offers a default pipeline" in capsys.readouterr().err

    def default_pipeline():
        return {"name": "fast", "drafter": {"type": "echo"}}

    def second():
        return {"drafter": {"type": "other"}}

    def declines():
        return None

    loaded = load_plugins([("declines", plugin(default_pipeline=declines)),
                           ("offers", plugin(default_pipeline=default_pipeline)),
                           ("also", plugin(default_pipeline=second))], entry_points=False)
    data = default_pipeline_data(loaded)
    assert data["drafter"] == {"type": "echo"} and data["name"] == "fast"
    assert data["acceptance"] == DEFAULT_PIPELINE["acceptance"]
    assert "default pipeline of plugin 'offers' (also offered by also)" in capsys.readouterr().err


def test_an_unknown_component_names_the_installed_distribution_that_declares_it():
    # specdec-plugin-medusa declares drafter.medusa in its metadata; not loaded here
    message = load_plugins(entry_points=False).registry.unknown_message("drafter", "medusa")
    assert "provided by the plugin distribution specdec-plugin-medusa, which is installed but not loaded" in message
    assert "provided by" not in load_plugins(entry_points=False).registry.unknown_message("drafter", "nothing")



def test_bundled_plugins_use_only_the_public_api():
    """What the tutorial teaches (`from specdec import ...` and the `specdec.testing` harness) is
    all the bundled plugins, their tests and their benchmark scripts need: authors copy them, and
    internal modules may change without notice."""
    import ast
    import re
    from pathlib import Path

    import specdec

    root = Path(__file__).resolve().parents[1]
    sources = sorted(path for folder in ("src", "tests", "benchmarks")
                     for path in root.glob(f"plugins/*/{folder}/**/*.py"))
    assert len(sources) > 80
    public = {*specdec.__all__, "__version__"}
    wrong = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                    (node.module == "specdec" or node.module.startswith("specdec.")):
                names = [alias.name for alias in node.names]
                if node.module == "specdec":
                    wrong += [f"{where}: specdec has no public {name}" for name in names if name not in public]
                elif node.module != "specdec.testing" or any(name.startswith("_") for name in names):
                    wrong.append(f"{where}: from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.Import):
                wrong += [f"{where}: import {alias.name}" for alias in node.names
                          if alias.name.startswith("specdec.") and alias.name != "specdec.testing"]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.search(r"\bfrom specdec\.(?!testing\b)\w+ import", node.value):
                wrong.append(f"{where}: code in a string imports an internal module")
    assert not wrong, "\n".join(wrong)


def test_check_plugin_asks_the_host_and_fails_for_what_it_does_not_find(monkeypatch):
    from specdec.testing import check_plugin

    with pytest.raises(AssertionError, match="does not find the plugin 'specdec_plugin_nothing'"):
        check_plugin("specdec_plugin_nothing")
    broken = importlib.metadata.EntryPoint("ghost", "specdec_no_such_module_xyz", "specdec")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    with pytest.raises(AssertionError, match="plugin 'ghost'.*failed during import"):
        check_plugin("ghost")
