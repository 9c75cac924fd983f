"""The JSON Lines reader every file format of specdec and its plugins goes through."""

import pytest

from specdec import (InputError, TokenSequence, json_lines, parse_json_lines, read_chat_prompts, read_corpus,
                     read_json_lines, write_jsonl)


def test_values_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2, 3]\n"text"\n', encoding="utf-8")
    assert list(read_json_lines(path)) == [(1, {"a": 1}), (4, [2, 3]), (5, "text")]


def test_a_bad_line_names_its_file_and_line_or_goes_to_on_error():
    lines = ['{"a": 1}', "{cut sho", "7"]
    with pytest.raises(InputError, match=r"^q\.jsonl:2: not valid JSON: "):
        list(json_lines(lines, "q.jsonl"))
    problems = []
    assert list(json_lines(lines, "q.jsonl", on_error=problems.append)) == [(1, {"a": 1}), (3, 7)]
    assert len(problems) == 1 and problems[0].startswith("q.jsonl:2: not valid JSON")


def test_chat_prompt_files_hold_prompts_or_conversations_and_plain_files_one_prompt_a_line(tmp_path):
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "Hi"}\n\n{"messages": [{"role": "system", "content": "Be brief."}, '
                     '{"role": "user", "content": "Why?"}]}\n', encoding="utf-8")
    assert read_chat_prompts(jsonl) == [[{"role": "user", "content": "Hi"}],
                                        [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Why?"}]]
    text = tmp_path / "prompts.txt"
    text.write_text("  first  \n\nsecond\n", encoding="utf-8")
    assert read_chat_prompts(text) == [[{"role": "user", "content": "first"}], [{"role": "user", "content": "second"}]]


@pytest.mark.parametrize("name, content, message", [
    ("p.jsonl", '{"prompt": "ok"}\n{"messages": [{"role": "user"}]}\n', r"p\.jsonl:2: 'messages' must be a non-empty"),
    ("p.jsonl", '"just a string"\n', r"p\.jsonl:1: expected an object"),
    ("p.txt", "\n  \n", "holds no prompts"),
    ("p.txt", b"ok\ncaf\xe9\n", r"p\.txt:2: not UTF-8"),
    ("absent.jsonl", None, "cannot read the prompt file"),
])
def test_a_bad_prompt_file_is_an_input_error_naming_its_place(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_chat_prompts(path)


def test_a_record_holding_a_raw_line_separator_reads_back(tmp_path):
    """JSON allows U+2028, U+2029 and U+0085 raw inside a string, and `write_jsonl` writes them raw
    (`ensure_ascii=False`): a reader that splits a text with `str.splitlines()` cuts such a record in two."""
    record = {"messages": [{"role": "user", "content": "a\u2028b\u2029c\x85d"}], "token_ids": [5, 6, 7],
              "num_prompt_tokens": 1}
    path = tmp_path / "train.jsonl"
    write_jsonl([record, record], path)
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert read_corpus([path], tokenizer=None) == [TokenSequence((5, 6, 7), ((1, 3),))] * 2
    assert list(parse_json_lines(path.read_text(encoding="utf-8"), path)) == [(1, record), (2, record)]


@pytest.mark.parametrize("name", ["train.jsonl", "train.txt"])
def test_a_training_file_that_is_not_utf8_is_an_input_error_naming_its_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'{"token_ids": [1, 2]}\n{"text": "caf\xe9"}\n' if name.endswith(".jsonl") else b"one\n\ncaf\xe9\n")
    with pytest.raises(InputError, match=rf"{name}:\d: not UTF-8 text \(byte 0xe9"):
        read_corpus([path], tokenizer=None)
    with pytest.raises(InputError, match="cannot read the training file"):
        read_corpus([tmp_path / "missing.txt"], tokenizer=None)
