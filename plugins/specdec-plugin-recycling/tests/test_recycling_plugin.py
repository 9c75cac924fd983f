"""The plugin as specdec sees it: installed, registered, configurable from YAML."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from specdec import ConfigError, load_plugins, load_yaml, validate_pipeline
from specdec.testing import check_plugin

from specdec_plugin_recycling import TokenRecyclingParams, _build_token_recycling
from specdec_plugin_recycling.templates import PAPER_TREE, TreeTemplate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_specdec_finds_the_plugin_and_its_drafter():
    check_plugin("specdec_plugin_recycling", [("drafter", "token_recycling")],
                 distribution="specdec-plugin-recycling")


def test_every_example_pipeline_validates():
    registry = load_plugins().registry
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert [path.name for path in files] == ["token_recycling.yaml"]
    for path in files:
        data, text = load_yaml(path)
        assert validate_pipeline(data, registry, str(path), text).spec.drafter.type == "token_recycling"


@pytest.mark.parametrize("params, message", [
    ({"top_k": 4}, "path [4] uses rank 4, but the table keeps only the top 4"),  # the paper's tree needs 8
    ({"tree": [[0], [0, 1, 2]]}, "path [0, 1, 2] needs its prefix [0, 1]"),
    ({"tree": []}, "the tree lists no path"),
    ({"tree": "medusa"}, "drafter.params.tree"),
    ({"table": "global"}, "drafter.params.table: must be one of"),
    ({"max_node": 8}, "did you mean 'max_nodes'"),
    ({"node_cost": "fast"}, "drafter.params.node_cost"),
])
def test_params_are_checked(params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_pipeline({"drafter": {"type": "token_recycling", "params": params}}, load_plugins().registry)


def test_the_plugin_module_does_not_import_torch():
    code = ("import sys, specdec_plugin_recycling; from specdec import load_plugins; load_plugins(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_the_paper_tree_is_the_reference_implementations():
    # version "2.2.2" of Luowaterbi/TokenRecycling: 80 nodes in levels of 8, 21, 25, 15, 8, 3, ranks 0-7
    template = TreeTemplate.from_paths(PAPER_TREE)
    assert template.num_nodes == 80 and template.depth == 6 and template.top_k == 8
    assert [sum(len(path) == depth for path in PAPER_TREE) for depth in range(1, 7)] == [8, 21, 25, 15, 8, 3]
    assert PAPER_TREE[:10] == [[0], [1], [2], [3], [4], [5], [6], [7], [0, 0], [0, 1]]
    assert PAPER_TREE[-3:] == [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]
    assert all(parent < node for node, parent in enumerate(template.parents))


def test_a_pipeline_shares_one_table_between_its_drafters_unless_per_request():
    context = SimpleNamespace(extras={}, target=None)  # node_cost is a number: the target is not timed
    shared = TokenRecyclingParams()
    first, second = _build_token_recycling(context, shared), _build_token_recycling(context, shared)
    assert first.state is second.state and not first.per_request
    other = _build_token_recycling(SimpleNamespace(extras={}, target=None), shared)  # another pipeline
    assert other.state is not first.state
    alone = TokenRecyclingParams(table="request")
    assert _build_token_recycling(context, alone).state is not _build_token_recycling(context, alone).state
    assert _build_token_recycling(context, alone).per_request
