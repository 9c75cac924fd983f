"""Spec-Bench question files: loading, tasks, the per-task selection and multi-turn messages.

A question file is JSON Lines, one question a line, in Spec-Bench's format:

    {"question_id": 81, "category": "writing", "turns": ["Compose a blog post ...", "Rewrite it ..."]}

The eight MT-bench categories count as one task, `mt_bench`, as Spec-Bench reports them; every
other category (translation, summarization, qa, math_reasoning, rag) is a task of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from specdec import ConfigError, parse_json_lines, read_text_file

MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
#: Spec-Bench's column order; tasks it does not know follow in file order.
TASK_ORDER = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]  # the user messages, in order

    @property
    def task(self) -> str:
        return task_of(self.category)


def task_of(category: str) -> str:
    """The Spec-Bench task of a question category: MT-bench categories are one task."""
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


def parse_questions(text: str, source: str = "<questions>") -> list[Question]:
    """Questions of a JSON Lines text; problems are reported with their line numbers."""
    questions: list[Question] = []
    seen: dict[int | str, int] = {}
    problems: list[str] = []
    for number, item in parse_json_lines(text, source, on_error=problems.append):
        where = f"{source}:{number}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a JSON object with question_id, category and turns")
            continue
        missing = [key for key in ("question_id", "category", "turns") if key not in item]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        question_id, category, turns = item["question_id"], item["category"], item["turns"]
        if not isinstance(question_id, (int, str)) or isinstance(question_id, bool):
            problems.append(f"{where}: question_id must be an integer or a string")
            continue
        if not isinstance(category, str) or not category:
            problems.append(f"{where}: category must be a non-empty string")
            continue
        if not isinstance(turns, list) or not turns or not all(isinstance(turn, str) and turn for turn in turns):
            problems.append(f"{where}: turns must be a non-empty list of non-empty strings")
            continue
        if question_id in seen:
            problems.append(f"{where}: question_id {question_id!r} already used on line {seen[question_id]}")
            continue
        seen[question_id] = number
        questions.append(Question(question_id, category, tuple(turns)))
    if problems:
        raise ConfigError("\n".join(problems))
    if not questions:
        raise ConfigError(f"{source}: no questions")
    return questions


def load_questions(path: str | Path) -> list[Question]:
    return parse_questions(read_text_file(path, "question file"), str(path))


def tasks_in(questions: Sequence[Question]) -> list[str]:
    """The tasks present, in Spec-Bench's order, unknown ones after in file order."""
    present = list(dict.fromkeys(question.task for question in questions))
    known = [task for task in TASK_ORDER if task in present]
    return known + [task for task in present if task not in TASK_ORDER]


def select_questions(questions: Sequence[Question], tasks: Sequence[str] | None = None,
                     limit: int | None = None) -> list[Question]:
    """The first `limit` questions of each task (file order), for the given tasks (all when None).

    The result is in file order, so a run visits tasks as the file interleaves them.
    """
    available = tasks_in(questions)
    if tasks:
        unknown = [task for task in tasks if task not in available]
        if unknown:
            raise ConfigError(f"--tasks: unknown task(s) {', '.join(unknown)}; this question file has "
                              f"{', '.join(available)}")
    wanted = set(tasks or available)
    taken: dict[str, int] = {}
    chosen = []
    for question in questions:
        task = question.task
        if task not in wanted or (limit is not None and taken.get(task, 0) >= limit):
            continue
        taken[task] = taken.get(task, 0) + 1
        chosen.append(question)
    return chosen


def build_messages(turns: Sequence[str], answers: Sequence[str], turn: int) -> list[dict]:
    """Chat messages for turn `turn` (1-based) of a question: every earlier user turn followed by
    the model's own answer to it, then the current user turn.

    :param answers: the answers to turns 1 .. turn-1 (at least that many).
    """
    if not 1 <= turn <= len(turns):
        raise ValueError(f"turn {turn} is outside 1..{len(turns)}")
    if len(answers) < turn - 1:
        raise ValueError(f"turn {turn} needs the answers to the {turn - 1} earlier turn(s), got {len(answers)}")
    messages: list[dict] = []
    for index in range(turn - 1):
        messages.append({"role": "user", "content": turns[index]})
        messages.append({"role": "assistant", "content": answers[index]})
    messages.append({"role": "user", "content": turns[turn - 1]})
    return messages
