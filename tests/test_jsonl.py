"""The JSON Lines reader every file format of specdec and its plugins goes through."""

import pytest

from specdec import InputError, json_lines, read_json_lines


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
