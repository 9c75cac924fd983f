"""The measurement loop: every method answers every turn of every question, interleaved.

For each run and question, the methods go in an order rotated by one place per question, and
within a question every method answers turn t before any answers turn t+1, so that machine drift
(thermal state, other processes) lands on all methods alike. Each method continues its own
conversation: turn t's prompt holds the method's own earlier answers. Every record is appended to
`records.jsonl` as soon as it is measured, so an interrupted run keeps its work and a resumed run
skips what is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from specdec import ConfigError, mean_accepted_tokens, read_json_lines, tokens_per_second

from specdec_plugin_bench.metrics import first_difference, record_key
from specdec_plugin_bench.questions import Question, build_messages

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.json"
ANSWER_SLACK_TOKENS = 16  # per earlier answer: chat-template tokens and re-encoding drift
WARMUP_TOKENS = 32  # the untimed warm-up generation per method is capped at this many tokens


@dataclass(frozen=True)
class BenchSettings:
    """The generation settings every method runs with (the pipelines' sampling blocks are not used)."""

    max_new_tokens: int = 256
    runs: int = 1
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None

    def params(self, seed: int | None = None):
        from specdec import SamplingParams

        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=seed,
                              max_new_tokens=self.max_new_tokens, stop_token_ids=None, stop_strings=())

    @property
    def check_outputs(self) -> bool:
        """At temperature 0 every lossless method must reproduce the AR output exactly."""
        return self.temperature == 0

    def seed_for(self, run: int, question_index: int, turn: int) -> int | None:
        """The same seed for every method on one turn (None when no --seed was given)."""
        if self.seed is None:
            return None
        return (self.seed + run * 1_000_003 + question_index * 1_009 + turn) % (1 << 62)

    def measured(self) -> dict:
        """The settings a record's numbers depend on (a resumed run must keep them)."""
        values = asdict(self)
        values.pop("runs")
        return values


class RecordStore:
    """The records of an output folder, appended to `records.jsonl` one line each as measured."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / RECORDS_FILE
        self.records: dict[tuple, dict] = {}
        self.unreadable = 0
        if self.path.exists():
            # a line cut short when a run was killed mid-write is skipped and counted
            for _, record in read_json_lines(self.path, on_error=self._skip):
                try:
                    self.records[record_key(record)] = record
                except (KeyError, TypeError):
                    self._skip("not a record")
        self._file = None

    def _skip(self, message: str) -> None:
        self.unreadable += 1

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

    def __getitem__(self, key: tuple) -> dict:
        return self.records[key]

    def __len__(self) -> int:
        return len(self.records)

    def values(self) -> list[dict]:
        return list(self.records.values())

    def append(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            needs_newline = False
            if self.path.exists() and self.path.stat().st_size > 0:
                with self.path.open("rb") as existing:  # a line cut short by a kill must not swallow ours
                    existing.seek(-1, 2)
                    needs_newline = existing.read(1) != b"\n"
            self._file = self.path.open("a", encoding="utf-8")
            if needs_newline:
                self._file.write("\n")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.records[record_key(record)] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def check_resumable(stored: dict, settings: BenchSettings, target: dict, methods: Sequence[dict]) -> None:
    """Refuse to add records measured differently to an existing folder's."""
    problems = []
    old = stored.get("settings", {})
    for key, value in settings.measured().items():
        if key in old and old[key] != value:
            problems.append(f"{key} was {old[key]!r}, now {value!r}")
    if stored.get("target") and stored["target"] != target:
        problems.append(f"the target was {stored['target']}, now {target}")
    old_signatures = {info["label"]: info.get("signature") for info in stored.get("methods", [])}
    old_signatures.update(stored.get("signatures", {}))  # every method the folder ever measured
    for info in methods:
        before = old_signatures.get(info["label"])
        if info["label"] in old_signatures and before != info["signature"]:
            problems.append(f"method '{info['label']}' changed: was {before}, now {info['signature']}")
    if problems:
        raise ConfigError("cannot resume: the earlier records were measured differently ("
                          + "; ".join(problems) + "); use another --output folder")


def pending(methods: Sequence, questions: Sequence[Question], settings: BenchSettings, store: RecordStore) -> int:
    """How many generations are still to measure."""
    return sum(1 for run in range(1, settings.runs + 1) for question in questions
               for turn in range(1, len(question.turns) + 1) for method in methods
               if (method.label, question.question_id, turn, run) not in store)


def rotated(methods: Sequence, offset: int) -> list:
    offset %= max(len(methods), 1)
    return list(methods[offset:]) + list(methods[:offset])


def make_record(method, question: Question, turn: int, run: int, seed: int | None, prompt_ids: Sequence[int],
                measurement, text: str) -> dict:
    """One generation as a JSON-ready dict (fields named as in `specdec.stats`)."""
    stats = measurement.stats
    new_tokens, steps, wall = measurement.new_tokens, measurement.steps, measurement.wall_seconds
    draft_seconds = measurement.draft_seconds
    ids = [int(token) for token in measurement.output_ids]
    return {
        "method": method.label, "kind": method.kind,
        "question_id": question.question_id, "category": question.category, "task": question.task,
        "turn": turn, "num_turns": len(question.turns), "run": run, "seed": seed,
        "prompt_tokens": len(prompt_ids), "new_tokens": new_tokens, "steps": steps,
        "wall_seconds": wall, "tokens_per_second": tokens_per_second(new_tokens, wall),
        "mean_accepted_tokens": mean_accepted_tokens(new_tokens, steps) if steps else None,
        "draft_seconds": draft_seconds,
        "draft_ms_per_step": 1000.0 * draft_seconds / steps if draft_seconds is not None and steps else None,
        "target_forwards": measurement.target_forwards,
        "accepted_length_histogram": list(stats.accepted_length_histogram) if stats is not None else None,
        "drafted_at_depth": list(stats.drafted_at_depth) if stats is not None else None,
        "accepted_at_depth": list(stats.accepted_at_depth) if stats is not None else None,
        "acceptance_by_position": list(stats.acceptance_by_position) if stats is not None else None,
        "finish_reason": measurement.finish_reason,
        "output_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16],
        "output_ids": ids,
        "text": text,
    }


def longest_conversation(encoder, questions: Sequence[Question], max_new_tokens: int) -> int:
    """An upper bound on the tokens (prompt + answer) of any turn of any question: the last turn's
    prompt with empty earlier answers, plus every turn's answer with room for the chat template
    and for an answer that re-encodes to a few more tokens than were generated."""
    longest = 0
    for question in questions:
        turns = len(question.turns)
        prompt = encoder.encode(build_messages(question.turns, [""] * (turns - 1), turns))
        longest = max(longest, len(prompt) + turns * (max_new_tokens + ANSWER_SLACK_TOKENS))
    return longest


def measure(methods: Sequence, questions: Sequence[Question], settings: BenchSettings, store: RecordStore,
            baseline: str, progress: bool = True) -> int:
    """Measure every (method, question, turn, run) the store lacks; returns how many were measured.

    `methods[0]` encodes chat messages and decodes answers for all (they share one tokenizer).
    KeyboardInterrupt propagates after the records measured so far are safely on disk.
    """
    from tqdm.auto import tqdm

    todo = pending(methods, questions, settings, store)
    if todo == 0:
        return 0
    encoder = methods[0]
    longest = longest_conversation(encoder, questions, settings.max_new_tokens)
    warmup_prompt = encoder.encode(build_messages(questions[0].turns, [], 1))
    warmup = settings.params().replace(max_new_tokens=min(settings.max_new_tokens, WARMUP_TOKENS))
    for method in methods:
        if hasattr(method, "prepare"):
            method.prepare(longest)
        method.generate(warmup_prompt, warmup)

    measured = mismatched = 0
    with tqdm(total=todo, desc="specdec bench", unit="gen", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for run in range(1, settings.runs + 1):
            for index, question in enumerate(questions):
                order = rotated(methods, index + run - 1)  # each run shifts every question by one
                answers: dict[str, list[str]] = {method.label: [] for method in methods}
                for turn in range(1, len(question.turns) + 1):
                    seed = settings.seed_for(run, index, turn)
                    outputs: dict[str, list[int]] = {}
                    for method in order:
                        key = (method.label, question.question_id, turn, run)
                        if key in store:
                            record = store[key]
                        else:
                            bar.set_description_str(f"{method.label} q{question.question_id} t{turn}",
                                                    refresh=False)
                            prompt_ids = encoder.encode(build_messages(question.turns, answers[method.label], turn))
                            measurement = method.generate(prompt_ids, settings.params(seed))
                            record = make_record(method, question, turn, run, seed, prompt_ids, measurement,
                                                 encoder.decode(measurement.output_ids))
                            store.append(record)
                            measured += 1
                            bar.update(1)
                        answers[method.label].append(record["text"].strip())
                        outputs[method.label] = record["output_ids"]
                    if settings.check_outputs and baseline in outputs:
                        mismatched += sum(1 for label, ids in outputs.items()
                                          if label != baseline and first_difference(ids, outputs[baseline]) is not None)
                        bar.set_postfix_str(f"mismatches {mismatched}", refresh=False)
    return measured
