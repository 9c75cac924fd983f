"""The benchmark's arithmetic: small pure functions over per-question records (plain dicts).

A record is one generation: one method answering one turn of one question in one run. The
fields used here are `method`, `question_id`, `task`, `turn` (1-based), `num_turns`, `run`
(1-based), `new_tokens`, `steps`, `wall_seconds`, `output_ids`, and the step counters
`accepted_length_histogram`, `drafted_at_depth`, `accepted_at_depth`, `draft_seconds`, named and
counted as in `specdec.stats.GenerationStats`.

Definitions (Spec-Bench's, and `specdec.stats`'s):
- per-question speed = new tokens of all its turns / wall seconds of all its turns (prefill included);
- speedup of a method = mean per-question speed of the method / that of the AR baseline, over the
  questions both completed in the same run; with several runs, one speedup per run, then their
  spread;
- mean accepted tokens = sum of new tokens / sum of steps (target forwards); it counts the
  target's own token, so plain decoding scores exactly 1.0;
- acceptance rate at draft position d = steps that accepted >= d draft tokens / steps whose
  draft reached depth d.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import specdec

Record = dict
Key = tuple  # (method, question_id, turn, run)

OVERALL = "overall"


def record_key(record: Record) -> Key:
    """What identifies a measurement: a resumed run skips keys it already has."""
    return (record["method"], record["question_id"], record["turn"], record["run"])


# -- equality with the AR output ------------------------------------------------------------------

def first_difference(output: Sequence[int], reference: Sequence[int]) -> int | None:
    """The first position where two token sequences differ (the shorter length when one is a
    prefix of the other), or None when they are equal."""
    for index, (left, right) in enumerate(zip(output, reference)):
        if left != right:
            return index
    return None if len(output) == len(reference) else min(len(output), len(reference))


def annotate_mismatches(records: Sequence[Record], baseline: str, check: bool = True) -> list[Record]:
    """Copies of the records with the comparison against the baseline's output of the same
    question, turn and run: `matches_ar` (True, False, or None when not checked: the baseline's
    own records, `check=False` for sampled runs, or no baseline record yet), `first_difference`,
    and `history_matches_ar` (False when an earlier turn of the conversation already differed, so
    this turn answered a different prompt)."""
    reference = {(r["question_id"], r["turn"], r["run"]): r for r in records if r["method"] == baseline}
    annotated = []
    for record in records:
        copy = dict(record, matches_ar=None, first_difference=None, history_matches_ar=None)
        ref = reference.get((record["question_id"], record["turn"], record["run"]))
        if check and record["method"] != baseline and ref is not None:
            position = first_difference(record["output_ids"], ref["output_ids"])
            copy["matches_ar"] = position is None
            copy["first_difference"] = position
        annotated.append(copy)
    if check:
        by_conversation: dict[tuple, list[Record]] = defaultdict(list)
        for record in annotated:
            by_conversation[(record["method"], record["question_id"], record["run"])].append(record)
        for conversation in by_conversation.values():
            diverged = False
            for record in sorted(conversation, key=lambda item: item["turn"]):
                if record["matches_ar"] is not None:
                    record["history_matches_ar"] = not diverged
                diverged = diverged or record["matches_ar"] is False
    return annotated


def mismatches(records: Iterable[Record]) -> list[Record]:
    """The annotated records whose output differs from the baseline's."""
    return [record for record in records if record.get("matches_ar") is False]


# -- speed ----------------------------------------------------------------------------------------

def question_speeds(records: Iterable[Record]) -> dict[tuple, float]:
    """Per-question speed of one method, keyed by (run, question_id): tokens of all turns / seconds
    of all turns. Questions with a turn still missing (an interrupted run) are left out."""
    tokens: dict[tuple, int] = defaultdict(int)
    seconds: dict[tuple, float] = defaultdict(float)
    turns: dict[tuple, set] = defaultdict(set)
    expected: dict[tuple, int] = {}
    for record in records:
        key = (record["run"], record["question_id"])
        tokens[key] += record["new_tokens"]
        seconds[key] += record["wall_seconds"]
        turns[key].add(record["turn"])
        expected[key] = record.get("num_turns", 1)
    return {key: specdec.tokens_per_second(tokens[key], seconds[key]) for key in tokens
            if len(turns[key]) >= expected[key] and seconds[key] > 0}


def speedups_by_run(method_records: Iterable[Record], baseline_records: Iterable[Record]) -> dict[int, float]:
    """One speedup per run: mean per-question speed of the method / that of the baseline, over
    the questions both completed in that run."""
    method, baseline = question_speeds(method_records), question_speeds(baseline_records)
    result = {}
    for run in sorted({run for run, _ in method}):
        shared = [key for key in method if key[0] == run and key in baseline]
        if shared:
            method_mean = sum(method[key] for key in shared) / len(shared)
            baseline_mean = sum(baseline[key] for key in shared) / len(shared)
            if baseline_mean > 0:
                result[run] = method_mean / baseline_mean
    return result


def mean_speed_by_run(records: Iterable[Record]) -> dict[int, float]:
    """Mean per-question tokens/s of one method, per run."""
    per_run: dict[int, list[float]] = defaultdict(list)
    for (run, _), speed in question_speeds(records).items():
        per_run[run].append(speed)
    return {run: sum(values) / len(values) for run, values in sorted(per_run.items())}


@dataclass(frozen=True)
class Spread:
    """A value measured once per run: mean, min, max and sample standard deviation."""

    mean: float
    low: float
    high: float
    std: float
    count: int

    def format(self, digits: int = 2, suffix: str = "") -> str:
        text = f"{self.mean:.{digits}f}{suffix}"
        if self.count > 1:
            text += f" ({self.low:.{digits}f}-{self.high:.{digits}f})"
        return text


def spread(values: Iterable[float]) -> Spread | None:
    values = list(values)
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return Spread(mean, min(values), max(values), std, len(values))


# -- acceptance -----------------------------------------------------------------------------------

def mean_accepted_tokens(records: Iterable[Record]) -> float | None:
    """Committed tokens per target forward: sum of new tokens / sum of steps."""
    records = list(records)
    steps = sum(record["steps"] for record in records)
    return specdec.mean_accepted_tokens(sum(record["new_tokens"] for record in records), steps) if steps else None


def merge_counts(lists: Iterable[Sequence[int] | None]) -> list[int]:
    """Element-wise sum of count lists of any lengths (histograms, per-depth counters)."""
    merged: list[int] = []
    for counts in lists:
        for index, count in enumerate(counts or ()):
            if index == len(merged):
                merged.append(0)
            merged[index] += count
    return merged


def acceptance_by_position(records: Iterable[Record]) -> list[float]:
    """Acceptance rate at each draft depth, pooled over the records' steps."""
    records = list(records)
    drafted = merge_counts(record.get("drafted_at_depth") for record in records)
    accepted = merge_counts(record.get("accepted_at_depth") for record in records)
    return [(accepted[depth] if depth < len(accepted) else 0) / count
            for depth, count in enumerate(drafted) if count]


def steps_from_forwards(forwards: Sequence[tuple[int, int | None]], prompt_length: int,
                        new_tokens: int) -> list[tuple[int, int]] | None:
    """Per-step (drafted, committed) token counts of a Hugging Face generate call, rebuilt from
    its target forwards.

    :param forwards: per target forward, (tokens fed, tokens already in the cache before it).
    :returns: None when the forwards do not describe a sequence of steps (cache length unknown,
        or counts that do not add up).

    Before forward i the sequence holds S(i-1) tokens (S(-1) = the prompt) and the cache c(i) of
    them; the S(i-1) - c(i) uncached ones are fed with the draft after them. A rejected draft
    is cropped from the cache, so the next forward starts at c(i+1) = S(i) - 1.
    """
    if not forwards or any(cached is None for _, cached in forwards):
        return None
    steps = []
    length = prompt_length
    for index, (fed, cached) in enumerate(forwards):
        pending = length - cached
        drafted = fed - pending
        after = forwards[index + 1][1] + 1 if index + 1 < len(forwards) else prompt_length + new_tokens
        committed = after - length
        if pending < 1 or drafted < 0 or committed < 1:
            return None
        steps.append((drafted, committed))
        length = after
    return steps


# -- summaries ------------------------------------------------------------------------------------

@dataclass
class MethodSummary:
    """One method on one task (or overall)."""

    method: str
    task: str
    questions: int  # questions with every turn measured, counted once across runs
    records: int
    speedup: Spread | None  # None when the baseline has no comparable question
    tokens_per_second: Spread | None
    mean_accepted_tokens: float | None
    acceptance_by_position: list[float] = field(default_factory=list)
    accepted_length_histogram: list[int] = field(default_factory=list)
    draft_ms_per_step: float | None = None
    checked: int = 0  # records compared with the baseline's output
    mismatches: int = 0

    def to_dict(self) -> dict:
        def spread_dict(value: Spread | None):
            return None if value is None else {"mean": value.mean, "min": value.low, "max": value.high,
                                               "std": value.std, "runs": value.count}
        return {"method": self.method, "task": self.task, "questions": self.questions,
                "records": self.records, "speedup": spread_dict(self.speedup),
                "tokens_per_second": spread_dict(self.tokens_per_second),
                "mean_accepted_tokens": self.mean_accepted_tokens,
                "acceptance_by_position": self.acceptance_by_position,
                "accepted_length_histogram": self.accepted_length_histogram,
                "draft_ms_per_step": self.draft_ms_per_step,
                "checked": self.checked, "mismatches": self.mismatches}


def summarize_method(records: Sequence[Record], baseline_records: Sequence[Record], method: str,
                     task: str) -> MethodSummary:
    """The summary of one method's (annotated) records on one task against the baseline's."""
    speeds = question_speeds(records)
    timed = [record for record in records if record.get("draft_seconds") is not None]
    histogram = merge_counts(record.get("accepted_length_histogram") for record in records)
    deepest = len(merge_counts(record.get("drafted_at_depth") for record in records))
    if histogram:  # bins run to the deepest draft, so a never-reached length shows as an empty bin
        histogram += [0] * (deepest + 1 - len(histogram))
    timed_steps = sum(record["steps"] for record in timed)
    return MethodSummary(
        method=method, task=task,
        questions=len({question for _, question in speeds}),
        records=len(records),
        speedup=spread(speedups_by_run(records, baseline_records).values()),
        tokens_per_second=spread(mean_speed_by_run(records).values()),
        mean_accepted_tokens=mean_accepted_tokens(records),
        acceptance_by_position=acceptance_by_position(records),
        accepted_length_histogram=histogram,
        draft_ms_per_step=(1000.0 * sum(record["draft_seconds"] for record in timed) / timed_steps
                           if timed_steps else None),
        checked=sum(1 for record in records if record.get("matches_ar") is not None),
        mismatches=len(mismatches(records)),
    )


def summarize(records: Sequence[Record], methods: Sequence[str], baseline: str,
              tasks: Sequence[str]) -> dict[str, dict[str, MethodSummary]]:
    """Summaries keyed by task (then `OVERALL`) and method, for annotated records."""
    by_task: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_task[record["task"]][record["method"]].append(record)
        by_task[OVERALL][record["method"]].append(record)
    result: dict[str, dict[str, MethodSummary]] = {}
    for task in [*tasks, OVERALL]:
        groups = by_task.get(task, {})
        result[task] = {method: summarize_method(groups.get(method, []), groups.get(baseline, []), method, task)
                        for method in methods}
    return result
