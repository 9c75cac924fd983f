"""`specdec bench` end to end on a tiny local model, through the CLI and the `register_commands` hook."""

import json
import subprocess
import sys

import pytest

from specdec import default_plugins, main
from specdec.testing import check_plugin, save_tiny_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def bench_registered(monkeypatch):
    """The CLI with only the built-ins and this plugin (other installed plugins stay out)."""
    monkeypatch.setenv("SPECDEC_LOAD_PLUGINS", "specdec_plugin_bench")
    default_plugins.cache_clear()  # the process-wide set is built once: build it again, then forget it
    plugins = default_plugins()
    assert not plugins.failures and plugins.manager.has_plugin("specdec_plugin_bench")
    yield plugins
    default_plugins.cache_clear()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    model = save_tiny_model(folder / "model", seed=5)
    ar = folder / "ar.yaml"
    ar.write_text(f"name: ar\ntarget: {{model: {model}}}\ndrafter: {{type: none}}\nsampling: {{max_new_tokens: 256}}\n")
    draft = folder / "draft.yaml"
    draft.write_text(f"name: draft\ntarget: {{model: {model}}}\n"
                     f"drafter: {{type: draft_model, params: {{model: {model}, num_tokens: 3}}}}\n")
    questions = folder / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(item) for item in [
        {"question_id": 81, "category": "writing", "turns": ["write a poem.", "now shorter, please."]},
        {"question_id": 101, "category": "qa", "turns": ["why is the sky blue?"]},
        {"question_id": 102, "category": "qa", "turns": ["who are you?"]},
        {"question_id": 201, "category": "rag", "turns": ["not selected by --tasks"]},
    ]) + "\n")
    return {"folder": folder, "model": model, "ar": ar, "draft": draft, "questions": questions}


def bench(files, output, *extra):
    return main(["bench", "-q", str(files["questions"]), "-p", str(files["ar"]), str(files["draft"]),
                 "--tasks", "mt_bench", "qa", "-n", "8", "--no-progress", *extra,
                 *(["-o", str(output)] if output else [])])


def read_records(folder):
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def test_specdec_finds_the_installed_plugin_and_its_command():
    check_plugin("specdec_plugin_bench", distribution="specdec-plugin-bench", commands=True)


def test_the_bench_command_is_registered_through_the_hook(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--questions" in out and "--hf-baselines" in out and "--resume" in out


def test_the_light_modules_do_not_import_torch():
    code = ("import sys, specdec_plugin_bench, specdec_plugin_bench.cli, specdec_plugin_bench.methods, "
            "specdec_plugin_bench.report; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_smoke_run_writes_tables_json_and_plots_with_no_mismatch(files, tmp_path, capsys):
    output = tmp_path / "out"
    assert bench(files, output, "--limit", "1") == 0
    out = capsys.readouterr().out
    assert "## Overall" in out and "| `draft` |" in out and "| `hf-prompt-lookup` |" in out
    for name in ("report.md", "results.json", "records.jsonl", "config.json"):
        assert (output / name).is_file()
    for name in ("speedup.png", "accepted_lengths.png"):
        assert (output / name).read_bytes().startswith(PNG)

    results = json.loads((output / "results.json").read_text())
    methods = [info["label"] for info in results["meta"]["methods"]]
    assert methods == ["ar", "draft", "hf-generate", "hf-prompt-lookup", "hf-assisted"]
    assert results["mismatches"] == []
    records = results["records"]
    assert len(records) == len(methods) * 3  # question 81 has two turns, question 101 one
    assert {(r["question_id"], r["turn"]) for r in records} == {(81, 1), (81, 2), (101, 1)}
    assert all(r["matches_ar"] is True for r in records if r["method"] != "ar")
    for task in ("mt_bench", "qa", "overall"):
        assert results["summary"][task]["draft"]["speedup"]["mean"] > 0
        assert results["summary"][task]["draft"]["mismatches"] == 0

    by = {(r["method"], r["question_id"], r["turn"]): r for r in records}
    # the draft model is the target itself: every draft token is accepted
    assert by[("draft", 101, 1)]["mean_accepted_tokens"] > 1.5
    plain = by[("hf-generate", 101, 1)]
    assert plain["steps"] == plain["new_tokens"] == plain["target_forwards"]  # one forward per token
    lookup = by[("hf-prompt-lookup", 101, 1)]
    assert lookup["steps"] == lookup["target_forwards"] == sum(lookup["accepted_length_histogram"])
    assert by[("hf-assisted", 101, 1)]["steps"] < by[("hf-assisted", 101, 1)]["new_tokens"]
    # turn 2 is answered after the model's own turn-1 answer
    assert by[("ar", 81, 2)]["prompt_tokens"] > by[("ar", 81, 1)]["prompt_tokens"] + by[("ar", 81, 1)]["new_tokens"]
    markdown = (output / "report.md").read_text()
    assert "## MT-bench" in markdown and "## QA" in markdown and "Every output equals `ar`'s" in markdown


def test_resume_skips_measured_records_and_report_rewrites(files, tmp_path, capsys):
    output = tmp_path / "out"
    assert bench(files, output, "--limit", "1", "--hf-baselines", "generate") == 0
    first = {(r["method"], r["question_id"], r["turn"], r["run"]): r["wall_seconds"] for r in read_records(output)}
    assert len(first) == 3 * 3
    assert bench(files, None, "--limit", "2", "--hf-baselines", "generate", "--resume", str(output)) == 0
    records = read_records(output)
    assert len(records) == 3 * 4  # only question 102 was new
    again = {(r["method"], r["question_id"], r["turn"], r["run"]): r["wall_seconds"] for r in records}
    assert all(again[key] == seconds for key, seconds in first.items())
    capsys.readouterr()
    assert main(["bench", "--report", str(output)]) == 0
    assert "| `hf-generate` |" in capsys.readouterr().out
    # a changed setting cannot be mixed into the same folder
    assert bench(files, None, "-n", "4", "--hf-baselines", "generate", "--resume", str(output)) == 2
    assert "max_new_tokens was 8, now 4" in capsys.readouterr().err
    assert bench(files, output, "--hf-baselines", "generate") == 2
    assert "already holds a benchmark" in capsys.readouterr().err


def test_ctrl_c_keeps_the_records_and_writes_a_partial_report(files, tmp_path, monkeypatch, capsys):
    from specdec_plugin_bench.methods import HFMethod

    original, calls = HFMethod.generate, []

    def interrupted(self, prompt_ids, params):
        calls.append(1)
        if len(calls) > 2:  # the warm-up and one timed generation, then Ctrl-C
            raise KeyboardInterrupt
        return original(self, prompt_ids, params)

    monkeypatch.setattr(HFMethod, "generate", interrupted)
    output = tmp_path / "out"
    assert bench(files, output, "--limit", "1", "--hf-baselines", "generate") == 130
    assert "--resume" in capsys.readouterr().err
    assert 0 < len(read_records(output)) < 9
    assert "Interrupted" in (output / "report.md").read_text()
    monkeypatch.setattr(HFMethod, "generate", original)
    assert bench(files, None, "--limit", "1", "--hf-baselines", "generate", "--resume", str(output)) == 0
    assert len(read_records(output)) == 9


def test_configuration_errors_exit_with_status_2(files, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text(f"name: other\ntarget: {{model: {files['model']}, dtype: bfloat16}}\n")
    assert main(["bench", "-q", str(files["questions"]), "-p", str(files["ar"]), str(other)]) == 2
    assert "one target model" in capsys.readouterr().err
    assert main(["bench", "-q", str(files["questions"]), "-p", str(files["ar"]), "--hf-baselines", "assisted"]) == 2
    assert "needs a pipeline with a draft_model drafter" in capsys.readouterr().err
    assert main(["bench", "-q", str(files["questions"]), "--tasks", "poetry"]) == 2
    assert "unknown task(s) poetry" in capsys.readouterr().err
    assert main(["bench", "-q", str(files["questions"]), "-p", str(files["ar"]), str(files["ar"])]) == 2
    assert "two methods are labelled 'ar'" in capsys.readouterr().err
    assert main(["bench", "-q", str(files["questions"]), "--top-p", "2"]) == 2
    assert "--top-p" in capsys.readouterr().err
    assert main(["bench", "-p", str(files["ar"])]) == 2
    assert "needs --questions" in capsys.readouterr().err


def test_sampled_run_skips_the_equality_check(files, tmp_path):
    output = tmp_path / "out"
    assert bench(files, output, "--limit", "1", "--tasks", "qa", "--hf-baselines", "none",
                 "-t", "0.8", "--seed", "3") == 0
    markdown = (output / "report.md").read_text()
    assert "Not checked: this run samples (temperature 0.8)" in markdown
    assert {r["method"] for r in read_records(output)} == {"ar", "draft"}
    assert all(r["seed"] is not None for r in read_records(output))


def test_batch_size_measures_throughput_of_every_pipeline_at_every_size(files, tmp_path, capsys):
    out = tmp_path / "throughput"
    assert main(["bench", "-q", str(files["questions"]), "-p", str(files["draft"]), "-n", "6",
                 "--batch-size", "1", "3", "-o", str(out), "--no-progress"]) == 0
    results = json.loads((out / "throughput.json").read_text())
    assert results["labels"] == ["AR", "draft"] and results["batch_sizes"] == [1, 3]
    rows = {(row["pipeline"], row["batch_size"]): row for row in results["rows"]}
    assert set(rows) == {("AR", 1), ("AR", 3), ("draft", 1), ("draft", 3)}
    assert all(row["tokens_per_second"] > 0 and row["requests"] == rows[("AR", 1)]["requests"] for row in rows.values())
    assert rows[("AR", 1)]["mean_accepted_tokens"] == 1.0 and rows[("draft", 3)]["mean_accepted_tokens"] > 1.0
    assert "| AR | 3 |" in (out / "throughput.md").read_text()
    assert "tok/s" in capsys.readouterr().out


def test_device_and_dtype_replace_every_pipelines_target(files, bench_registered):
    """`--device`/`--dtype` run one set of pipeline files on a CPU or a GPU alike (the files'
    default target is the CPU in float32)."""
    from specdec_plugin_bench.cli import validated_pipelines

    paths = [str(files["ar"]), str(files["draft"])]
    plain = validated_pipelines(paths, bench_registered)
    assert {(item.spec.target.device, item.spec.target.dtype) for item in plain} == {("cpu", "float32")}
    moved = validated_pipelines(paths, bench_registered, {"device": "auto", "dtype": "bfloat16"})
    assert {(item.spec.target.device, item.spec.target.dtype) for item in moved} == {("auto", "bfloat16")}
    assert {item.spec.target.model for item in moved} == {str(files["model"])}  # the rest is kept
    only_dtype = validated_pipelines(paths, bench_registered, {"device": None, "dtype": "bfloat16"})
    assert {(item.spec.target.device, item.spec.target.dtype) for item in only_dtype} == {("cpu", "bfloat16")}
    [ar] = validated_pipelines([], bench_registered, {"device": "auto", "dtype": None})
    assert ar.spec.drafter.type == "none" and ar.spec.target.device == "auto"


def test_an_unknown_device_is_a_configuration_error(files, tmp_path, capsys):
    assert bench(files, tmp_path / "out", "--device", "tpu") == 2
    assert "device" in capsys.readouterr().err


def test_the_report_says_what_a_drafter_was_built_as(files, tmp_path, monkeypatch):
    """A drafter whose class defines `__repr__` (what its `auto` settings resolved to) is named
    under "Methods"; one without says nothing more than its pipeline's description."""
    from specdec import DraftModelDrafter

    monkeypatch.setattr(DraftModelDrafter, "__repr__", lambda self: "DraftModelDrafter(k=3, resolved)",
                        raising=False)
    output = tmp_path / "out"
    assert bench(files, output, "--limit", "1", "--hf-baselines", "none", "--tasks", "qa") == 0
    methods = {info["label"]: info for info in json.loads((output / "config.json").read_text())["methods"]}
    assert methods["draft"]["built"] == "DraftModelDrafter(k=3, resolved)" and "built" not in methods["ar"]
    assert "built as `DraftModelDrafter(k=3, resolved)`" in (output / "report.md").read_text()


def test_tp_size_refuses_resume_and_report(files, tmp_path, capsys):
    assert bench(files, None, "--tp-size", "2", "--resume", str(tmp_path)) == 2
    assert "only rank 0 writes" in capsys.readouterr().err


def test_a_torchrun_launch_counts_as_sharded_without_tp_size(files, tmp_path, capsys, monkeypatch):
    """Pipelines may shard the target themselves (`target.tp_size: 2`): the launch, not the flag,
    says that only rank 0 writes."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["bench", "--report", str(tmp_path)]) == 2
    assert "only rank 0 writes" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_under_torchrun_writes_once_from_rank_0(files, tmp_path):
    """`--tp-size 2` on 2 CPU ranks (gloo): one report, from rank 0, with outputs equal to AR's."""
    import os

    output = tmp_path / "out"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "specdec.cli",
         "bench", "-q", str(files["questions"]), "-p", str(files["ar"]), str(files["draft"]), "--tasks", "qa",
         "-n", "8", "--no-progress", "--hf-baselines", "generate", "--tp-size", "2", "-o", str(output)],
        capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("## Overall") == 1
    records = read_records(output)
    assert {record["method"] for record in records} == {"ar", "draft", "hf-generate"}
    outputs = {}
    for record in records:
        outputs.setdefault((record["question_id"], record["turn"]), set()).add(tuple(record["output_ids"]))
    assert all(len(different) == 1 for different in outputs.values())  # every method's output is AR's
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # rank 1 wrote nothing here


def test_a_resume_refuses_records_measured_on_another_linear_kernel():
    from specdec import ConfigError
    from specdec_plugin_bench.cli import _check_same_kernel

    stored = {"environment": {"linear_kernel": "onednn_packed"}}
    _check_same_kernel(stored, {"linear_kernel": "onednn_packed"})
    _check_same_kernel({"environment": {}}, {"linear_kernel": "torch"})  # a run from before the setting
    with pytest.raises(ConfigError, match="--linear-kernel onednn_packed"):
        _check_same_kernel(stored, {"linear_kernel": "torch"})


def test_the_linear_kernel_flag_replaces_every_files_own(tmp_path):
    from specdec_plugin_bench.cli import validated_pipelines

    path = tmp_path / "p.yaml"
    path.write_text("target: {linear_kernel: onednn}\n")
    validated = validated_pipelines([str(path)], default_plugins(), {"linear_kernel": "torch", "device": None})
    assert validated[0].spec.target.linear_kernel == "torch"
