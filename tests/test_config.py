"""Pipeline files: every problem reported at once, each with its file, line and dotted place."""

import textwrap

import pytest

from specdec.config import load_yaml, validate_pipeline
from specdec.errors import ConfigError
from specdec.plugins import load_plugins

REGISTRY = load_plugins(entry_points=False).registry


def problems(tmp_path, text):
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    data, raw = load_yaml(path)
    with pytest.raises(ConfigError) as error:
        validate_pipeline(data, REGISTRY, str(path), raw)
    return [line.replace(str(path), "pipeline.yaml") for line in str(error.value).splitlines()]


def test_component_params_errors_name_their_place(tmp_path):
    assert problems(tmp_path, """\
        drafter:
          type: draft_model
          params:
            model: some/model
            num_tokens: 0
        """) == ["pipeline.yaml:5: drafter.params.num_tokens: must be >= 1"]


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, """\
        target:
          device: gpu
        drafter:
          type: draft_modle
        acceptance:
          type: typical
        sampling:
          temperature: -1
          max_new_tokns: 5
        verifer: {}
        """)
    assert found[0] == "pipeline.yaml:2: target.device: must be cpu, cuda, cuda:N, mps or auto"
    assert "pipeline.yaml:8: sampling.temperature: must be >= 0.0" in found
    assert any(line.startswith("pipeline.yaml:9: sampling.max_new_tokns: unknown field (did you mean "
                               "'max_new_tokens'?)") for line in found)
    assert any(line.startswith("pipeline.yaml:10: verifer: unknown section (did you mean 'verifier'?)")
               for line in found)
    assert ("pipeline.yaml:4: drafter.type: unknown drafter 'draft_modle'; did you mean 'draft_model'?; "
            "installed drafters: draft_model, fallback, none") in found
    assert any(line.startswith("pipeline.yaml:6: acceptance.type: unknown acceptance policy 'typical'; it "
                               "is provided by the plugin distribution specdec-plugin-typical")
               for line in found)


def test_missing_required_params_and_unknown_fields(tmp_path):
    found = problems(tmp_path, """\
        drafter:
          type: draft_model
          params: {modle: x}
        """)
    assert "pipeline.yaml:3: drafter.params.model: required field is missing" in found
    assert any("drafter.params.modle: unknown field (did you mean 'model'?); valid fields: model, "
               "num_tokens, greedy_draft" in line for line in found)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    assert "must be a mapping" in problems(tmp_path, "- a\n- b\n")[0]
    path = tmp_path / "broken.yaml"
    path.write_text("drafter: [\n")
    with pytest.raises(ConfigError, match="broken.yaml:2: not valid YAML"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load_yaml(tmp_path / "absent.yaml")


def test_yaml_tags_cannot_run_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("drafter: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)


def test_defaults_fill_an_empty_file():
    validated = validate_pipeline({}, REGISTRY)
    spec = validated.spec
    assert (spec.drafter.type, spec.verifier.type, spec.acceptance.type) == ("none", "hf", "rejection")
    assert spec.target.model is None and spec.sampling.temperature == 0.0


def test_nested_drafters_of_a_fallback_are_validated(tmp_path):
    found = problems(tmp_path, """\
        drafter:
          type: fallback
          params:
            drafters:
              - type: none
              - type: draft_model
                params: {num_tokens: 0, model: m}
              - type: nope
        """)
    assert "pipeline.yaml:7: drafter.params.drafters[1].params.num_tokens: must be >= 1" in found
    assert any(line.startswith("pipeline.yaml:8: drafter.params.drafters[2].type: unknown drafter 'nope'")
               for line in found)
