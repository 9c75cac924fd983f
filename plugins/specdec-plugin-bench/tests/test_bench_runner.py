"""The measurement loop with fake methods (no models): interleaving, multi-turn history, resume,
interruption, and a report written from synthetic records."""

import json

import pytest

from specdec_plugin_bench.methods import Measurement
from specdec_plugin_bench.questions import Question
from specdec_plugin_bench.report import write_report
from specdec_plugin_bench.runner import BenchSettings, RecordStore, check_resumable, measure, pending, rotated
from specdec import ConfigError


class FakeMethod:
    """Answers with fixed tokens; logs every (label, messages) it is asked to answer."""

    kind = "fake"

    def __init__(self, label, log, answer=(1, 2, 3), fail_after=None):
        self.label, self.log, self.answer, self.fail_after = label, log, list(answer), fail_after
        self.prompts = []

    def encode(self, messages):
        self.prompts.append(messages)
        return [len(self.prompts) - 1]

    def decode(self, ids):
        return " ".join(map(str, ids))

    def generate(self, prompt_ids, params):
        if self.fail_after is not None and len([e for e in self.log if e[0] == self.label]) >= self.fail_after:
            raise KeyboardInterrupt
        messages = ENCODER.prompts[prompt_ids[0]] if prompt_ids[0] < len(ENCODER.prompts) else None
        self.log.append((self.label, messages, params.max_new_tokens))
        return Measurement(self.answer[: params.max_new_tokens], steps=2, wall_seconds=0.01,
                           finish_reason="length", stats=None)


ENCODER = None
QUESTIONS = [Question(1, "writing", ("first", "second")), Question(2, "qa", ("only",)),
             Question(3, "rag", ("doc",))]
SETTINGS = BenchSettings(max_new_tokens=3, runs=2)


def make_methods(log, **answers):
    global ENCODER
    methods = [FakeMethod("ar", log), FakeMethod("a", log, answers.get("a", (1, 2, 3))),
               FakeMethod("b", log, answers.get("b", (1, 2, 3)))]
    ENCODER = methods[0]
    return methods


def test_methods_are_interleaved_in_rotated_order_after_one_warmup_each(tmp_path):
    log = []
    methods = make_methods(log)
    store = RecordStore(tmp_path)
    assert measure(methods, QUESTIONS, SETTINGS, store, "ar", progress=False) == 2 * 4 * 3
    warmups, timed = log[:3], log[3:]
    assert [label for label, _, _ in warmups] == ["ar", "a", "b"]
    assert all(tokens == 3 for _, _, tokens in log)  # warm-up capped at min(max_new_tokens, 32)
    labels = [label for label, _, _ in timed]
    # run 1: question 1 (two turns) starts with ar, question 2 with a, question 3 with b; run 2 rotates on
    assert labels[:6] == ["ar", "a", "b", "ar", "a", "b"]
    assert labels[6:9] == ["a", "b", "ar"] and labels[9:12] == ["b", "ar", "a"]
    assert labels[12:18] == ["a", "b", "ar"] * 2  # run 2 shifts every question by one more place
    assert len(store) == 24 and rotated(["x", "y", "z"], 4) == ["y", "z", "x"]


def test_a_second_turn_carries_the_methods_own_first_answer(tmp_path):
    log = []
    methods = make_methods(log, b=(7, 8, 9))
    measure(methods, QUESTIONS[:1], BenchSettings(max_new_tokens=3), RecordStore(tmp_path), "ar", progress=False)
    second = {label: messages for label, messages, _ in log[3:] if len(messages) == 3}
    assert second["ar"][1] == {"role": "assistant", "content": "1 2 3"}
    assert second["b"][1] == {"role": "assistant", "content": "7 8 9"}
    assert second["b"][0] == {"role": "user", "content": "first"} and second["b"][2]["content"] == "second"


def test_resume_skips_measured_records_and_keeps_history(tmp_path):
    log = []
    methods = make_methods(log, b=(7, 8, 9))
    settings = BenchSettings(max_new_tokens=3)
    measure(methods, QUESTIONS[:1], settings, RecordStore(tmp_path), "ar", progress=False)
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    # drop b's turn-2 record as if the run had stopped before it
    kept = [line for line in lines if not (json.loads(line)["method"] == "b" and json.loads(line)["turn"] == 2)]
    (tmp_path / "records.jsonl").write_text("\n".join(kept))  # no trailing newline, as after a kill
    store = RecordStore(tmp_path)
    assert pending(methods, QUESTIONS[:1], settings, store) == 1
    log.clear()
    assert measure(methods, QUESTIONS[:1], settings, store, "ar", progress=False) == 1
    assert [(label, len(messages)) for label, messages, _ in log[3:]] == [("b", 3)]
    assert log[3][1][1]["content"] == "7 8 9"  # the history comes from b's stored turn-1 record
    store.close()
    assert len(RecordStore(tmp_path)) == 6
    assert measure(methods, QUESTIONS[:1], settings, RecordStore(tmp_path), "ar", progress=False) == 0


def test_an_interrupted_run_keeps_what_it_measured(tmp_path):
    log = []
    methods = make_methods(log)
    methods[2].fail_after = 3  # b: its warm-up and two timed generations, then Ctrl-C
    store = RecordStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        measure(methods, QUESTIONS, BenchSettings(max_new_tokens=3), store, "ar", progress=False)
    store.close()
    on_disk = RecordStore(tmp_path)
    assert len(on_disk) == len(store) > 0
    assert {record["method"] for record in on_disk.values()} == {"ar", "a", "b"}


def test_unreadable_lines_are_skipped(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"method": "ar", "question_id": 1, "turn": 1, "run": 1}\n{"meth')
    store = RecordStore(tmp_path)
    assert len(store) == 1 and store.unreadable == 1


def test_resume_refuses_changed_settings_or_methods():
    settings = BenchSettings(max_new_tokens=8)
    stored = {"settings": settings.measured(), "target": {"model": "m"},
              "methods": [{"label": "a", "signature": {"k": 1}}]}
    check_resumable(stored, settings, {"model": "m"}, [{"label": "a", "signature": {"k": 1}},
                                                       {"label": "new", "signature": {}}])
    with pytest.raises(ConfigError, match="max_new_tokens was 8, now 16"):
        check_resumable(stored, BenchSettings(max_new_tokens=16), {"model": "m"}, [])
    with pytest.raises(ConfigError, match="method 'a' changed"):
        check_resumable(stored, settings, {"model": "m"}, [{"label": "a", "signature": {"k": 2}}])
    with pytest.raises(ConfigError, match="the target was"):
        check_resumable(stored, settings, {"model": "other"}, [])
    # a method measured in an earlier invocation but left out of the last one is still remembered
    stored["signatures"] = {"a": {"k": 1}, "dropped": {"k": 3}}
    with pytest.raises(ConfigError, match="method 'dropped' changed"):
        check_resumable(stored, settings, {"model": "m"}, [{"label": "dropped", "signature": {"k": 4}}])


def test_seeds_are_shared_by_methods_and_distinct_per_turn():
    assert BenchSettings().seed_for(1, 0, 1) is None
    seeded = BenchSettings(temperature=0.7, seed=5)
    seeds = {seeded.seed_for(run, index, turn) for run in (1, 2) for index in range(3) for turn in (1, 2)}
    assert len(seeds) == 12
    assert not seeded.check_outputs and BenchSettings().check_outputs


def _meta(temperature=0.0, runs=1):
    return {"settings": {"temperature": temperature, "top_k": None, "top_p": 1.0, "seed": None,
                         "max_new_tokens": 4, "runs": runs, "questions": "q.jsonl"},
            "target": {"model": "tiny", "device": "cpu", "dtype": "float32"}, "baseline": "ar",
            "methods": [{"label": "ar", "description": "AR", "lossless": True},
                        {"label": "spec", "description": "speculative", "lossless": True},
                        {"label": "sloppy", "description": "a lossy one", "lossless": False}]}


def _record(method, question, task, output, wall, steps=None, run=1, **extra):
    return {"method": method, "question_id": question, "task": task, "turn": 1, "num_turns": 1, "run": run,
            "new_tokens": len(output), "steps": steps or len(output), "wall_seconds": wall, "output_ids": output,
            **extra}


def test_report_lists_mismatches_and_writes_every_file(tmp_path):
    records = [_record("ar", 1, "qa", [1, 2, 3, 4], 1.0), _record("ar", 2, "rag", [5, 6], 1.0),
               _record("spec", 1, "qa", [1, 2, 3, 4], 0.5, steps=2, accepted_length_histogram=[0, 2],
                       drafted_at_depth=[2, 2], accepted_at_depth=[2, 1]),
               _record("spec", 2, "rag", [5, 9], 0.5, steps=1),
               _record("sloppy", 1, "qa", [1, 2, 3, 4], 0.25), _record("sloppy", 2, "rag", [5, 6], 0.25),
               _record("gone", 1, "qa", [1], 1.0)]
    report = write_report(tmp_path, records, _meta())
    markdown = (tmp_path / "report.md").read_text()
    assert "| `spec` | 2.00x | 2.00x | 2.00 | 2.00x |" in markdown  # leaderboard: QA, RAG, accepted, overall
    assert "`sloppy` (lossy)" in markdown
    assert "1 of 4 generations differ from `ar`'s output" in markdown
    assert "| `spec` | 2 | RAG | 1 | 1 | 1 |" in markdown  # question 2, first difference at position 1
    assert "| 1/2 |" in markdown and "reference" in markdown
    assert "`gone`" in markdown  # records of other methods are named as left out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mismatches"] == [{"method": "spec", "question_id": 2, "task": "rag", "turn": 1, "run": 1,
                                      "first_difference": 1, "history_matches_ar": True}]
    assert len(results["records"]) == 6 and results["summary"]["overall"]["spec"]["mismatches"] == 1
    assert {path.name for path in report.files} == {"report.md", "results.json", "speedup.png",
                                                    "accepted_lengths.png"}
    for name in ("speedup.png", "accepted_lengths.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert report.overall_table().startswith("## Overall")


def test_report_of_a_sampled_interrupted_run_says_so(tmp_path):
    records = [_record("ar", 1, "qa", [1, 2], 1.0), _record("spec", 1, "qa", [3, 4], 0.5)]
    write_report(tmp_path, records, _meta(temperature=0.8), interrupted=True)
    markdown = (tmp_path / "report.md").read_text()
    assert "Interrupted" in markdown and "Not checked: this run samples (temperature 0.8)" in markdown
    assert "not checked" in markdown
