"""The plugin as specdec sees it: installed, registered, configurable from YAML."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from specdec import ConfigError, load_plugins, load_yaml, validate_pipeline
from specdec.testing import check_plugin

from specdec_plugin_lookahead import LookaheadParams, _build_lookahead

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_specdec_finds_the_plugin_and_its_drafter():
    check_plugin("specdec_plugin_lookahead", [("drafter", "lookahead")], distribution="specdec-plugin-lookahead")


def test_every_example_pipeline_validates():
    registry = load_plugins().registry
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert [path.name for path in files] == ["jacobi.yaml", "lookahead-auto.yaml", "lookahead.yaml"]
    modes = {}
    for path in files:
        data, text = load_yaml(path)
        drafter = validate_pipeline(data, registry, str(path), text).spec.drafter
        assert drafter.type == "lookahead"
        modes[path.name] = data["drafter"]["params"].get("mode", "lookahead")
    assert modes == {"jacobi.yaml": "jacobi", "lookahead-auto.yaml": "lookahead", "lookahead.yaml": "lookahead"}


@pytest.mark.parametrize("params, message", [
    ({"ngram": 2}, "drafter.params.ngram"),  # lookahead needs N >= 3
    ({"window": 0}, "drafter.params.window"),
    ({"window": "big"}, "drafter.params.window"),
    ({"guesses": -1}, "drafter.params.guesses"),
    ({"mode": "jacobi", "ngram": 4}, "ngram applies only to mode: lookahead"),
    ({"mode": "jacobi", "guesses": 2, "pool_cap": 3}, "guesses, pool_cap apply only to mode: lookahead"),
    ({"mode": "medusa"}, "drafter.params.mode"),
    ({"windows": 4}, "did you mean 'window'"),
    ({"node_cost": "fast"}, "drafter.params.node_cost"),
])
def test_params_are_checked(params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_pipeline({"drafter": {"type": "lookahead", "params": params}}, load_plugins().registry)


def test_the_plugin_module_does_not_import_torch():
    code = ("import sys, specdec_plugin_lookahead; from specdec import load_plugins; load_plugins(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_the_factory_builds_each_mode_from_its_params():
    from specdec_plugin_lookahead.drafter import JacobiDrafter, LookaheadDrafter

    context = SimpleNamespace(extras={}, target=None)  # node_cost is a number: the target is not timed
    drafter = _build_lookahead(context, LookaheadParams(window=5, ngram=4, guesses=3, pool_cap=7))
    assert isinstance(drafter, LookaheadDrafter)
    assert (drafter.width, drafter.ngram, drafter.guesses, drafter.pool_cap) == (5, 4, 3, 7)
    auto = _build_lookahead(context, LookaheadParams())  # linear cost 0.08 per row: a window of one row
    assert (auto.width, auto.ngram) == (1, 3) and auto.auto_window and auto.auto_guesses
    jacobi = _build_lookahead(context, LookaheadParams(mode="jacobi", window=6))
    assert isinstance(jacobi, JacobiDrafter) and jacobi.width == 6 and not jacobi.auto
