"""Pipeline files: every problem reported at once, each with its file, line and dotted place."""

import pytest

from specdec.config import load_yaml, validate_pipeline
from specdec.errors import ConfigError
from specdec.plugins import load_plugins
from specdec.testing import config_problems

REGISTRY = load_plugins(entry_points=False).registry


def test_component_params_errors_name_their_place():
    assert config_problems("""\
        drafter:
          type: draft_model
          params:
            model: some/model
            num_tokens: 0
        """) == ["pipeline.yaml:5: drafter.params.num_tokens: must be >= 1"]


def test_every_problem_is_reported_at_once():
    found = config_problems("""\
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
            "installed drafters: draft_model, fallback, merge, none") in found
    assert any(line.startswith("pipeline.yaml:6: acceptance.type: unknown acceptance policy 'typical'; it "
                               "is provided by the plugin distribution specdec-plugin-typical")
               for line in found)


def test_missing_required_params_and_unknown_fields():
    found = config_problems("""\
        drafter:
          type: draft_model
          params: {modle: x}
        """)
    assert "pipeline.yaml:3: drafter.params.model: required field is missing" in found
    assert any("drafter.params.modle: unknown field (did you mean 'model'?); valid fields: model, "
               "num_tokens, greedy_draft" in line for line in found)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    assert "must be a mapping" in config_problems("- a\n- b\n")[0]
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


def test_nested_drafters_of_a_fallback_are_validated():
    found = config_problems("""\
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


def load_error(tmp_path, content: bytes | str) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as error:
        load_yaml(path)
    return str(error.value).replace(str(path), "pipeline.yaml")


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    # the 0-based byte offset within line 2 (26), not within the file (35)
    assert load_error(tmp_path, b"name: ok\nsampling: {seed: 1}  # caf\xe9\n") == (
        "pipeline.yaml:2: not UTF-8 text (byte 0xe9 at offset 26 of the line): save the file as UTF-8")


@pytest.mark.parametrize("text, value", [
    ("sampling: {temperature: !!float }\n", "'' as !!float"),
    ("sampling: {seed: !!int 0x}\n", "'0x' as !!int"),
    ("name: !!timestamp 5\n", "'5' as !!timestamp"),
    ("name: !!bool x\n", "'x' as !!bool"),
])
def test_badly_tagged_scalars_are_config_errors(tmp_path, text, value):
    message = load_error(tmp_path, text)
    assert message.startswith("pipeline.yaml:1: not valid YAML: cannot read ") and value in message


@pytest.mark.parametrize("text", [
    "name: " + "[" * 300 + "]" * 300 + "\n",
    "a:\n" + "".join("  " * level + f"b{level}:\n" for level in range(1, 300)) + "  " * 300 + "x\n",
])
def test_deep_nesting_is_refused_before_python_recurses_too_deep(tmp_path, text):
    assert "nested more than 64 levels deep" in load_error(tmp_path, text)


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    assert load_error(tmp_path, "drafter:\n  type: none\nsampling: {}\ndrafter:\n  type: fallback\n") == (
        "pipeline.yaml:4: not valid YAML: duplicate key 'drafter' (first on line 1, again on line 4); "
        "YAML would silently keep only the last one: merge them into one block")
    nested = load_error(tmp_path, "sampling:\n  seed: 1\n  top_k: 2\n  seed: 3\n")
    assert nested.startswith("pipeline.yaml:4: not valid YAML: duplicate key 'seed' (first on line 2, again on line 4)")


def test_merge_keys_may_still_override_what_they_merge(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("x: &base {seed: 1, top_k: 2}\nsampling:\n  <<: *base\n  seed: 5\n")
    data, _ = load_yaml(path)
    assert data["sampling"] == {"seed": 5, "top_k": 2}


def test_greedy_acceptance_with_a_temperature_is_refused_when_validated():
    assert config_problems("""\
        acceptance: {type: greedy}
        sampling:
          temperature: 0.7
        """) == ["pipeline.yaml:1: acceptance.type: the 'greedy' acceptance policy decodes "
                 "deterministically but temperature is 0.7; set temperature to 0 or use the "
                 "'rejection' policy, which samples losslessly at any temperature"]
    assert validate_pipeline({"acceptance": {"type": "greedy"}}, REGISTRY).spec.sampling.greedy


def test_many_problems_are_located_in_linear_time_and_listed_up_to_a_cap():
    import time

    text = "".join(f"key{index}: 1\n" for index in range(20_000))
    started = time.perf_counter()
    found = config_problems(text)
    elapsed = time.perf_counter() - started
    assert len(found) == 21 and found[-1] == "... and 19980 more problems"
    assert found[19].startswith("pipeline.yaml:20: key19: unknown section")
    assert elapsed < 30, f"took {elapsed:.1f} s: locating problems is not linear any more"
