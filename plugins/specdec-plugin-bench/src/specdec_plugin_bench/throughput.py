"""`specdec bench --batch-size N [N ...]`: throughput of each pipeline at each batch size.

For each task, every pipeline (plain decoding included) answers the first turn of the task's
questions through its step scheduler with `max_batch_size = N`: the questions are submitted at
once, so up to N sequences share each verification forward and a finished one is replaced by the
next (continuous batching). Measured per (pipeline, batch size): generated tokens per second over
all sequences (wall time of the whole task), per-request latency (submission to last token), mean
accepted tokens, and the share of outputs that differ from the same pipeline at batch size 1
(at temperature 0; batched matrix products round differently, so in float32 a near-tie can flip).
Methods run interleaved per task so that load changes on the machine hit them alike.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from specdec import mean_accepted_tokens, synchronize, tokens_per_second
from specdec_plugin_bench.questions import Question, build_messages, tasks_in


@dataclass
class Cell:
    """One pipeline at one batch size, over one task or all of them."""

    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    latencies: list[float] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)  # question id -> token ids

    @property
    def tokens_per_second(self) -> float:
        return tokens_per_second(self.tokens, self.seconds)

    def add(self, other: "Cell") -> None:
        self.tokens += other.tokens
        self.seconds += other.seconds
        self.steps += other.steps
        self.latencies += other.latencies
        self.outputs.update(other.outputs)


def run_task(pipeline, questions: Sequence[Question], batch_size: int, params) -> Cell:
    """Answer the first turn of every question with up to `batch_size` sequences per forward."""
    scheduler = pipeline.scheduler
    scheduler.max_batch_size = batch_size
    prompts = [pipeline.encode(build_messages(question.turns, [], 1)) for question in questions]
    synchronize(pipeline.device)
    started = time.perf_counter()
    handles = [scheduler.submit(prompt, params) for prompt in prompts]
    finished: dict[int, float] = {}
    while len(finished) < len(handles):
        scheduler.step()
        now = time.perf_counter()
        for index, handle in enumerate(handles):
            if handle.done and index not in finished:
                finished[index] = now - started
    synchronize(pipeline.device)
    cell = Cell(seconds=time.perf_counter() - started)
    for question, handle, index in zip(questions, handles, range(len(handles))):
        if handle.error is not None:
            raise handle.error
        cell.tokens += len(handle.result.tokens)
        cell.steps += handle.result.stats.steps
        cell.latencies.append(finished[index])
        cell.outputs[question.question_id] = handle.result.tokens
    return cell


def measure_throughput(pipelines: Sequence, labels: Sequence[str], questions: Sequence[Question],
                       batch_sizes: Sequence[int], params, progress=print) -> dict:
    """Every pipeline at every batch size on every task; returns the results as a dict."""
    longest = max(len(pipeline_prompt) for pipeline_prompt in
                  (pipelines[0].encode(build_messages(question.turns, [], 1)) for question in questions))
    for pipeline in pipelines:  # build drafters, CUDA graphs and verification costs before timing
        pipeline.scheduler.max_batch_size = max(batch_sizes)
        pipeline.scheduler.prepare(max(batch_sizes), longest + params.max_new_tokens)
        if pipeline.scheduler.budget is not None:
            for batch_size in batch_sizes:
                if batch_size > 1:
                    pipeline.scheduler.budget.cost_at(batch_size)
    cells: dict[tuple[str, int, str], Cell] = {}
    for task in tasks_in(questions):
        task_questions = [question for question in questions if question.task == task]
        for batch_size in batch_sizes:
            for pipeline, label in zip(pipelines, labels):
                cell = run_task(pipeline, task_questions, batch_size, params)
                cells[(label, batch_size, task)] = cell
                progress(f"{task:>15} batch {batch_size:>3} {label:>24}: {cell.tokens_per_second:7.1f} tok/s")
    return summarize(cells, labels, batch_sizes, tasks_in(questions))


def summarize(cells: dict, labels: Sequence[str], batch_sizes: Sequence[int], tasks: Sequence[str]) -> dict:
    rows = []
    for label in labels:
        for batch_size in batch_sizes:
            overall = Cell()
            per_task = {}
            for task in tasks:
                cell = cells[(label, batch_size, task)]
                overall.add(cell)
                per_task[task] = round(cell.tokens_per_second, 2)
            reference = {}
            for task in tasks:
                reference.update(cells[(label, min(batch_sizes), task)].outputs)
            differing = sum(overall.outputs[key] != reference[key] for key in overall.outputs)
            rows.append({
                "pipeline": label, "batch_size": batch_size,
                "tokens_per_second": round(overall.tokens_per_second, 2),
                "tokens_per_second_by_task": per_task,
                "mean_accepted_tokens": round(mean_accepted_tokens(overall.tokens, overall.steps), 3),
                "latency_median_s": round(statistics.median(overall.latencies), 3),
                "latency_p90_s": round(sorted(overall.latencies)[int(0.9 * (len(overall.latencies) - 1))], 3),
                "requests": len(overall.latencies),
                "outputs_differing_from_smallest_batch": differing,
            })
    return {"labels": list(labels), "batch_sizes": list(batch_sizes), "tasks": list(tasks), "rows": rows}


def markdown(summary: dict) -> str:
    """Throughput table: tokens/s overall and per task, ratios to AR at the same batch size and
    to the same pipeline at the smallest batch size."""
    rows = {(row["pipeline"], row["batch_size"]): row for row in summary["rows"]}
    labels, sizes, tasks = summary["labels"], summary["batch_sizes"], summary["tasks"]
    baseline = labels[0]
    header = ["pipeline", "batch", "tok/s", f"vs {baseline}", f"vs batch {sizes[0]}", *tasks,
              "accepted/step", "latency p50 s", "differ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        for size in sizes:
            row = rows[(label, size)]
            base = rows[(baseline, size)]["tokens_per_second"]
            first = rows[(label, sizes[0])]["tokens_per_second"]
            by_task = [f"{row['tokens_per_second_by_task'][task] / rows[(baseline, size)]['tokens_per_second_by_task'][task]:.2f}x"
                       if label != baseline else f"{row['tokens_per_second_by_task'][task]:.1f}" for task in tasks]
            lines.append("| " + " | ".join([
                label, str(size), f"{row['tokens_per_second']:.1f}", f"{row['tokens_per_second'] / base:.2f}x",
                f"{row['tokens_per_second'] / first:.2f}x", *by_task, f"{row['mean_accepted_tokens']:.2f}",
                f"{row['latency_median_s']:.1f}", f"{row['outputs_differing_from_smallest_batch']}/{row['requests']}",
            ]) + " |")
    note = (f"Per-task columns: {baseline}'s tokens/s, and for the other pipelines their ratio to {baseline} "
            f"at the same batch size. 'differ': outputs that differ from the same pipeline at batch size {sizes[0]}.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_throughput(directory: Path, summary: dict, meta: dict) -> list[Path]:
    """throughput.json, throughput.md and throughput.png in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / "throughput.json", directory / "throughput.md"]
    files[0].write_text(json.dumps({**meta, **summary}, indent=1), encoding="utf-8")
    files[1].write_text("# Throughput by batch size\n\n" + markdown(summary), encoding="utf-8")
    from specdec_plugin_bench.plots import throughput_chart

    points = [(row["pipeline"], row["batch_size"], row["tokens_per_second"]) for row in summary["rows"]]
    files.append(throughput_chart(points, directory / "throughput.png"))
    return files
