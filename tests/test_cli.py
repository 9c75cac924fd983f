"""The specdec command line: exit codes, messages without tracebacks, streaming with a stats line."""

import json
import subprocess
import sys

import pytest

from specdec.cli import main
from specdec.testing import save_tiny_model


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny_model(folder / "model", seed=2)
    path = folder / "tiny.yaml"
    path.write_text(f"name: tiny\ntarget: {{model: {model_dir}}}\n"
                    f"drafter: {{type: draft_model, params: {{model: {model_dir}, num_tokens: 3}}}}\n"
                    f"sampling: {{max_new_tokens: 12}}\n")
    return path


def test_generate_streams_text_and_ends_with_a_stats_line(pipeline_file, capsys):
    assert main(["generate", "--pipeline", str(pipeline_file), "hello"]) == 0
    out, err = capsys.readouterr()
    assert out.strip()
    assert "[tiny]" in err and "tok/s" in err and "mean accepted tokens" in err
    assert "acceptance by position" in err


def test_generate_json_and_sampling_overrides(pipeline_file, capsys):
    assert main(["generate", "-p", str(pipeline_file), "--json", "-n", "4", "-t", "0.8", "--seed", "3",
                 "hello"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["token_ids"]) == 4 and record["stats"]["new_tokens"] == 4


def test_bad_override_is_a_usage_error(pipeline_file, capsys):
    assert main(["generate", "-p", str(pipeline_file), "--top-p", "3", "hello"]) == 2
    assert "--top-p" in capsys.readouterr().err


def test_validate_reports_problems_with_exit_code_2(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("drafter: {type: none}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("drafter:\n  type: draft_model\n  params: {model: x, num_tokens: 0}\n")
    assert main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 2
    assert f"{bad}:3: drafter.params.num_tokens: must be >= 1" in capsys.readouterr().err


def test_missing_file_and_empty_prompt_are_user_errors(tmp_path, capsys):
    assert main(["generate", "--pipeline", str(tmp_path / "none.yaml"), "hi"]) == 2
    assert "cannot read pipeline file" in capsys.readouterr().err
    assert main(["generate", "--pipeline", str(tmp_path / "none.yaml"), "  "]) == 2


def test_plugins_lists_components_and_flags_lossy_policies(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "draft_model" in out and "[lossless]" in out
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {c["name"] for p in listing["plugins"] for c in p["components"]}
    assert {"none", "draft_model", "hf", "greedy", "rejection"} <= names


def test_console_script_runs_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("drafter: {type: nope}\n")
    done = subprocess.run([sys.executable, "-m", "specdec.cli", "validate", str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown drafter 'nope'" in done.stderr and "Traceback" not in done.stderr


def test_several_prompts_are_generated_together_and_equal_one_by_one(pipeline_file, capsys, tmp_path):
    prompts = ["hello", "abc", "what is this?"]
    alone = []
    for prompt in prompts:
        assert main(["generate", "-p", str(pipeline_file), "--json", "--raw", prompt]) == 0
        alone.append(json.loads(capsys.readouterr().out)["token_ids"])
    listing = tmp_path / "prompts.jsonl"
    listing.write_text(json.dumps(prompts[0]) + "\n\n" + "\n".join(json.dumps({"prompt": p}) for p in prompts[1:]))
    assert main(["generate", "-p", str(pipeline_file), "--raw", "--batch-size", "2",
                 "--prompts-file", str(listing)]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["index"] for record in records] == [0, 1, 2]
    assert [record["token_ids"] for record in records] == alone
    assert "3 prompts" in err and "batches of up to 2" in err
    assert main(["generate", "-p", str(pipeline_file), "--raw", *prompts[:2]]) == 0
    assert capsys.readouterr().out.count("--- [") == 2


def test_a_bad_prompts_file_is_a_usage_error(pipeline_file, capsys, tmp_path):
    listing = tmp_path / "bad.jsonl"
    listing.write_text('"fine"\n{"prompt": 3}\n')
    assert main(["generate", "-p", str(pipeline_file), "--prompts-file", str(listing)]) == 2
    assert f"{listing}:2" in capsys.readouterr().err
    listing.write_bytes(b'"\xff\xfe"\n')
    assert main(["generate", "-p", str(pipeline_file), "--prompts-file", str(listing)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["generate", "-p", str(pipeline_file), "--batch-size", "0", "hi"]) == 2


@pytest.fixture
def unloadable_pipeline(tmp_path):
    """A valid pipeline file whose target cannot load: a test passing with it proves nothing loaded."""
    path = tmp_path / "unloadable.yaml"
    path.write_text(f"target: {{model: {tmp_path / 'no-such-model'}}}\n")
    return path


@pytest.mark.parametrize("flags, message", [
    (["--stop", ""], "--stop: stop strings must be non-empty"),
    (["--top-k", "0"], "--top-k: Input should be greater than or equal to 1"),
    (["--temperature", "inf"], "--temperature: must be a finite number >= 0"),
    (["--seed", "-1"], "--seed: Input should be greater than or equal to 0"),
    (["-n", "0"], "--max-new-tokens: Input should be greater than or equal to 1"),
])
def test_bad_flags_are_named_before_the_model_loads(unloadable_pipeline, capsys, flags, message):
    assert main(["generate", "-p", str(unloadable_pipeline), *flags, "hello"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Value error" not in err and "no-such-model" not in err


def test_a_temperature_for_a_greedy_pipeline_is_refused_before_loading(tmp_path, capsys):
    path = tmp_path / "greedy.yaml"
    path.write_text(f"target: {{model: {tmp_path / 'no-such-model'}}}\nacceptance: {{type: greedy}}\n")
    assert main(["generate", "-p", str(path), "-t", "0.7", "hello"]) == 2
    assert "acceptance (from --temperature): the 'greedy' acceptance policy" in capsys.readouterr().err


def test_prompts_that_are_not_utf8_are_refused_before_loading(unloadable_pipeline):
    command = [sys.executable, "-m", "specdec.cli", "generate", "-p", str(unloadable_pipeline)]
    argv = subprocess.run([*command, b"caf\xe9"], capture_output=True, text=True)
    assert argv.returncode == 2 and "Traceback" not in argv.stderr
    assert "the prompt argument is not valid text: character 3 stands for byte 0xe9" in argv.stderr
    stdin = subprocess.run(command, input=b"hi \xff there", capture_output=True)
    assert stdin.returncode == 2 and b"Traceback" not in stdin.stderr
    assert b"the prompt on stdin is not UTF-8 text (byte 0xff at offset 3)" in stdin.stderr
