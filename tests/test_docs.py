"""Meta-tests that keep the documentation honest."""

import inspect
import re
import runpy
from pathlib import Path

import pytest

from specdec import hookspecs
from specdec.config import load_yaml, validate_pipeline
from specdec.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKS = [name for name, value in vars(hookspecs).items()
         if callable(value) and hasattr(value, f"{hookspecs.PROJECT}_spec")]


def test_every_hook_is_documented_with_its_exact_signature():
    text = (DOCS / "plugins.md").read_text()
    headings = re.findall(r"^### (\S+\(.*\))$", text, re.M)
    expected = [f"{name}{inspect.signature(getattr(hookspecs, name))}" for name in HOOKS]
    assert sorted(headings) == sorted(expected)


def test_every_hook_has_a_test():
    tests = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    assert len(HOOKS) == 5
    for name in HOOKS:
        assert re.search(rf"def {name}\(", tests), f"no test implements hook {name}"


def example_pipelines():
    found = sorted(set(DOCS.rglob("*.yaml")) | set(ROOT.glob("plugins/*/examples/**/*.yaml")))
    return [path for path in found if ".venv" not in path.parts]


def test_example_pipelines_are_all_found():
    names = {path.relative_to(ROOT).as_posix() for path in example_pipelines()}
    assert {"docs/pipelines/ar.yaml", "docs/pipelines/sampling.yaml", "docs/pipelines/draft_model.yaml",
            "docs/tutorial/specdec-plugin-bigram/bigram.yaml"} <= names
    for plugin in ROOT.glob("plugins/*/pyproject.toml"):
        if '"specdec.components"' in plugin.read_text():  # plugins that add pipeline components
            assert list(plugin.parent.glob("examples/*.yaml")), f"{plugin.parent.name} ships no example pipeline"


@pytest.mark.parametrize("path", example_pipelines(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_example_pipeline_validates(path):
    data, text = load_yaml(path)
    validate_pipeline(data, load_plugins().registry, str(path), text)


def quoted_files(document: Path):
    """(file, code) for every code block marked `<!-- file: relative/path -->` in a document."""
    text = document.read_text()
    return re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S)


def test_tutorial_code_blocks_are_the_real_files():
    blocks = quoted_files(DOCS / "writing-a-plugin.md")
    assert len(blocks) == 5
    for relative, code in blocks:
        assert (DOCS / relative).read_text() == code, f"{relative} differs from its copy in writing-a-plugin.md"


def test_protocols_worked_example_is_the_real_script_and_runs(capsys):
    text = (DOCS / "protocols.md").read_text()
    code = re.search(r"## Worked example.*?```python\n(.*?)```", text, re.S).group(1)
    script = DOCS / "examples" / "worked_step.py"
    assert script.read_text().endswith(code)
    runpy.run_path(str(script))
    assert "Acceptance(path=()" in capsys.readouterr().out


def test_every_relative_link_in_the_docs_resolves():
    """A copied benchmark report keeps links to charts that were not copied with it, a renamed file
    leaves links behind: every relative link of the markdown we ship must name an existing file."""
    pages = {ROOT / "README.md", *DOCS.rglob("*.md"), *ROOT.glob("plugins/*/*.md")}
    broken = []
    for page in sorted(pages):
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not a link
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link) or link.startswith("#"):
                continue
            if not (page.parent / link.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
