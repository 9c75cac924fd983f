"""Question files: validation, Spec-Bench tasks, the per-task selection and multi-turn messages."""

import json

import pytest

from specdec_plugin_bench.questions import (MT_BENCH_CATEGORIES, build_messages, load_questions, parse_questions,
                                     select_questions, task_of, tasks_in)
from specdec import ConfigError


def lines(*items):
    return "\n".join(json.dumps(item) for item in items) + "\n"


QUESTIONS = lines(
    {"question_id": 1, "category": "writing", "turns": ["w1", "w2"]},
    {"question_id": 2, "category": "rag", "turns": ["r"]},
    {"question_id": 3, "category": "coding", "turns": ["c1", "c2"]},
    {"question_id": 4, "category": "translation", "turns": ["t"]},
    {"question_id": 5, "category": "rag", "turns": ["r2"], "reference": ["ignored"]},
    {"question_id": "x6", "category": "new_task", "turns": ["n"]},
)


def test_mt_bench_categories_are_one_task():
    assert {task_of(category) for category in MT_BENCH_CATEGORIES} == {"mt_bench"}
    assert task_of("translation") == "translation" and task_of("math_reasoning") == "math_reasoning"


def test_tasks_follow_spec_bench_order_then_file_order():
    questions = parse_questions(QUESTIONS)
    assert tasks_in(questions) == ["mt_bench", "translation", "rag", "new_task"]
    assert questions[-1].question_id == "x6" and questions[0].turns == ("w1", "w2")


def test_limit_takes_the_first_questions_of_each_task_in_file_order():
    questions = parse_questions(QUESTIONS)
    assert [q.question_id for q in select_questions(questions, limit=1)] == [1, 2, 4, "x6"]
    assert [q.question_id for q in select_questions(questions)] == [1, 2, 3, 4, 5, "x6"]
    assert [q.question_id for q in select_questions(questions, ["rag", "mt_bench"], 2)] == [1, 2, 3, 5]


def test_unknown_tasks_are_named_with_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown task\(s\) writing; this question file has mt_bench, "):
        select_questions(parse_questions(QUESTIONS), ["writing"])


def test_problems_are_reported_with_line_numbers(tmp_path):
    text = lines({"question_id": 1, "category": "qa", "turns": ["a"]},
                 {"question_id": 1, "category": "qa", "turns": ["b"]},
                 {"category": "qa", "turns": ["c"]},
                 {"question_id": 4, "category": "qa", "turns": []}) + "{not json\n"
    path = tmp_path / "q.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_questions(path)
    message = str(error.value)
    assert f"{path}:2: question_id 1 already used on line 1" in message
    assert f"{path}:3: missing question_id" in message
    assert f"{path}:4: turns must be a non-empty list" in message
    assert f"{path}:5: not valid JSON" in message
    with pytest.raises(ConfigError, match="cannot read question file"):
        load_questions(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="no questions"):
        parse_questions("\n\n", "empty.jsonl")


def test_multi_turn_messages_carry_the_models_own_answers():
    turns = ["first question", "second question", "third question"]
    assert build_messages(turns, [], 1) == [{"role": "user", "content": "first question"}]
    assert build_messages(turns, ["answer one", "answer two"], 3) == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "answer two"},
        {"role": "user", "content": "third question"},
    ]
    with pytest.raises(ValueError, match="needs the answers"):
        build_messages(turns, ["answer one"], 3)
    with pytest.raises(ValueError, match="outside"):
        build_messages(turns, [], 4)


def test_the_shared_dev_questions_parse():
    from pathlib import Path

    # next to the checkout: plugins/specdec-plugin-bench/tests -> the folder holding the repository
    path = Path(__file__).resolve().parents[4] / "shared" / "data" / "spec_bench" / "dev.jsonl"
    if not path.exists():
        pytest.skip("the shared Spec-Bench dev questions are not in this checkout")
    questions = load_questions(path)
    assert len(questions) == 231
    assert tasks_in(questions) == ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]
    assert sum(len(q.turns) == 2 for q in questions) == 37


def test_a_question_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(lines({"question_id": 1, "category": "qa", "turns": ["a"]}).encode() + b'{"x": "\xe9"}\n')
    with pytest.raises(ConfigError, match=f"{path}:2: not UTF-8 text \\(byte 0xe9 at offset 7 of the line\\)"):
        load_questions(path)
