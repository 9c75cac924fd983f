"""The benchmark's outputs, written from whatever records exist (so an interrupted run reports too).

    report.md            leaderboard, one table per task, overall, every mismatch, the methods
    results.json         settings, summaries and every per-question record with its comparison
    speedup.png          speedup by task and method
    accepted_lengths.png accepted-length histogram per drafting method
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from specdec_plugin_bench import metrics, plots
from specdec_plugin_bench.questions import TASK_ORDER

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
SPEEDUP_PLOT = "speedup.png"
HISTOGRAM_PLOT = "accepted_lengths.png"

TASK_NAMES = {"mt_bench": "MT-bench", "translation": "Translation", "summarization": "Summarization",
              "qa": "QA", "math_reasoning": "Math", "rag": "RAG", metrics.OVERALL: "Overall"}


@dataclass
class Report:
    markdown: str
    summary: dict  # task -> method -> MethodSummary
    records: list  # annotated
    mismatches: list
    files: list[Path]

    def overall_table(self) -> str:
        """The overall section of the Markdown, for printing after a run."""
        start = self.markdown.index("## Overall")
        end = self.markdown.find("\n## ", start + 1)
        return self.markdown[start:end if end >= 0 else None].strip()


def task_name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def ordered_tasks(records: Sequence[dict]) -> list[str]:
    present = list(dict.fromkeys(record["task"] for record in records))
    return [task for task in TASK_ORDER if task in present] + [task for task in present if task not in TASK_ORDER]


def write_report(directory: str | Path, records: Sequence[dict], meta: dict, interrupted: bool = False) -> Report:
    """Summarize `records` for the methods `meta["methods"]` lists and write every output file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    methods = [info["label"] for info in meta["methods"]]
    baseline = meta["baseline"]
    check = meta["settings"]["temperature"] == 0
    kept = [record for record in records if record["method"] in methods]
    left_out = sorted({record["method"] for record in records} - set(methods))
    annotated = metrics.annotate_mismatches(kept, baseline, check=check)
    tasks = ordered_tasks(annotated)
    summary = metrics.summarize(annotated, methods, baseline, tasks)
    found = metrics.mismatches(annotated)

    markdown = _markdown(meta, summary, tasks, found, annotated, check, interrupted, left_out)
    files = [directory / REPORT_FILE, directory / RESULTS_FILE]
    files[0].write_text(markdown, encoding="utf-8")
    results = {
        "meta": dict(meta, interrupted=interrupted, records_left_out_for_methods=left_out),
        "summary": {task: {method: item.to_dict() for method, item in by_method.items()}
                    for task, by_method in summary.items()},
        "mismatches": [_mismatch_entry(record) for record in found],
        "records": annotated,
    }
    files[1].write_text(json.dumps(results, indent=1), encoding="utf-8")
    files += _plots(directory, meta, summary, tasks, methods, baseline)
    return Report(markdown, summary, annotated, found, files)


def _mismatch_entry(record: dict) -> dict:
    return {key: record[key] for key in ("method", "question_id", "task", "turn", "run", "first_difference",
                                         "history_matches_ar")}


# -- Markdown -------------------------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    align = ["---" if index < numeric_from else "---:" for index in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _speedup(item: metrics.MethodSummary, baseline: str) -> str:
    if item.method == baseline and item.speedup:
        return "1.00x"
    return item.speedup.format(2, "x") if item.speedup else "-"


def _tokens_per_second(item: metrics.MethodSummary) -> str:
    return item.tokens_per_second.format(1) if item.tokens_per_second else "-"


def _accepted(item: metrics.MethodSummary) -> str:
    return f"{item.mean_accepted_tokens:.2f}" if item.mean_accepted_tokens is not None else "-"


def _mismatch_cell(item: metrics.MethodSummary, baseline: str, check: bool) -> str:
    if item.method == baseline:
        return "reference"
    if not check:
        return "not checked"
    return f"{item.mismatches}/{item.checked}" if item.checked else "-"


def _positions(rates: Sequence[float], limit: int = 8) -> str:
    if not rates:
        return "-"
    text = " ".join(f"{rate:.2f}" for rate in rates[:limit])
    return text + (" ..." if len(rates) > limit else "")


def _markdown(meta: dict, summary: dict, tasks: list[str], found: list[dict], records: list[dict],
              check: bool, interrupted: bool, left_out: list[str]) -> str:
    settings, target, baseline = meta["settings"], meta["target"], meta["baseline"]
    methods = [info["label"] for info in meta["methods"]]
    lossy = {info["label"] for info in meta["methods"] if not info.get("lossless", True)}

    def name(method: str) -> str:
        return f"`{method}`" + (" (lossy)" if method in lossy else "")

    runs = settings["runs"]
    sampling = ("greedy (temperature 0)" if check else
                f"sampling: temperature {settings['temperature']}, top_k {settings['top_k']}, "
                f"top_p {settings['top_p']}, seed {settings['seed']}")
    questions = {task: summary[task][baseline].questions for task in tasks}
    environment = meta.get("environment", {})
    lines = ["# specdec bench", ""]
    if interrupted:
        lines += ["**Interrupted: this report covers only the records measured so far.** "
                  "Rerun with `--resume` to complete it.", ""]
    lines += [
        f"Target `{target['model']}` on {environment.get('device_name', target['device'])} "
        f"({target['dtype']}{_kernel(environment)}); {sampling}; max_new_tokens {settings['max_new_tokens']}; "
        f"{runs} run{'s' if runs != 1 else ''}; questions from `{settings['questions']}` "
        f"({', '.join(f'{task_name(task)} {count}' for task, count in questions.items())}).",
        "",
        f"Speedup = mean per-question tokens/s of the method / that of `{baseline}` (plain "
        "autoregressive decoding through specdec's engine), measured in the same invocation with the "
        "methods interleaved per question; wall time includes prefill. Mean accepted tokens = new "
        "tokens / target forwards (1.00 for plain decoding)."
        + (" With several runs: mean across runs (min-max)." if runs > 1 else ""),
        "",
        "## Leaderboard",
        "",
    ]
    headers = ["Method", *[task_name(task) for task in tasks], "Mean accepted tokens", "Overall"]
    rows = [[name(method), *[_speedup(summary[task][method], baseline) for task in tasks],
             _accepted(summary[metrics.OVERALL][method]), _speedup(summary[metrics.OVERALL][method], baseline)]
            for method in methods]
    lines += [_table(headers, rows), ""]

    lines += ["## Overall", ""]
    headers = ["Method", "Speedup", "Mean accepted tokens", "Tokens/s", "Mismatches", "Questions",
               "Acceptance by position", "Draft ms/step"]
    rows = []
    for method in methods:
        item = summary[metrics.OVERALL][method]
        rows.append([name(method), _speedup(item, baseline), _accepted(item), _tokens_per_second(item),
                     _mismatch_cell(item, baseline, check), str(item.questions),
                     _positions(item.acceptance_by_position),
                     f"{item.draft_ms_per_step:.2f}" if item.draft_ms_per_step is not None else "-"])
    lines += [_table(headers, rows), ""]

    for task in tasks:
        lines += [f"## {task_name(task)}", ""]
        headers = ["Method", "Speedup", "Mean accepted tokens", "Tokens/s", "Mismatches", "Questions"]
        rows = []
        for method in methods:
            item = summary[task][method]
            rows.append([name(method), _speedup(item, baseline), _accepted(item), _tokens_per_second(item),
                         _mismatch_cell(item, baseline, check), str(item.questions)])
        lines += [_table(headers, rows), ""]

    lines += ["## Output equality with AR", ""]
    if not check:
        lines += [f"Not checked: this run samples (temperature {settings['temperature']}), so outputs are "
                  "random draws and differ from the AR output even for lossless methods.", ""]
    else:
        compared = sum(1 for record in records if record.get("matches_ar") is not None)
        if not found:
            lines += [f"Every output equals `{baseline}`'s, token for token ({compared} generations compared).", ""]
        else:
            lines += [f"{len(found)} of {compared} generations differ from `{baseline}`'s output "
                      "(position = index of the first differing generated token):", ""]
            rows = [[f"`{record['method']}`", str(record["question_id"]), task_name(record["task"]),
                     str(record["turn"]), str(record["run"]), str(record["first_difference"]),
                     "" if record["history_matches_ar"] else "an earlier turn already differed"]
                    for record in found]
            lines += [_table(["Method", "Question", "Task", "Turn", "Run", "Position", "Note"], rows,
                             numeric_from=7), ""]

    lines += ["## Methods", ""]
    for info in meta["methods"]:
        built = f"; built as `{info['built']}`" if info.get("built") else ""
        lines.append(f"- {name(info['label'])}: {info['description']}{built}")
    lines.append("")
    if left_out:
        lines += [f"Records of other methods in this folder are kept but not reported: "
                  f"{', '.join(f'`{method}`' for method in left_out)}.", ""]
    lines += ["## Plots", "",
              f"`{SPEEDUP_PLOT}`: a group of bars per task and overall, a bar per method; the dashed line is "
              f"`{baseline}` at 1.0" + ("; whiskers span the min-max across runs." if runs > 1 else "."), "",
              f"![Speedup by task]({SPEEDUP_PLOT})", "",
              f"`{HISTOGRAM_PLOT}`: for each method that drafts, the share of steps that accepted 0, 1, 2 ... "
              "draft tokens (bins run to the deepest draft; methods that never draft are left out).", "",
              f"![Accepted-length histograms]({HISTOGRAM_PLOT})", ""]
    if environment:
        lines += ["## Environment", ""]
        lines += [f"- {key}: {value}" for key, value in environment.items()]
        lines.append("")
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------------

def _plots(directory: Path, meta: dict, summary: dict, tasks: list[str], methods: list[str],
           baseline: str) -> list[Path]:
    colors = {method: plots.color_of(index) for index, method in enumerate(methods)}
    compared = [method for method in methods if method != baseline]
    groups = [*tasks, metrics.OVERALL]
    values = {}
    for g, task in enumerate(groups):
        for s, method in enumerate(compared):
            item = summary[task][method].speedup
            values[(g, s)] = (item.mean, item.low, item.high) if item else None
    target = meta["target"]
    title = f"Speedup over {baseline} by task ({target['model']}, {target['device']})"
    speedup = plots.speedup_chart([task_name(task) for task in groups], [(m, colors[m]) for m in compared],
                                  values, directory / SPEEDUP_PLOT, title, baseline)
    overall = summary[metrics.OVERALL]
    drafting = [method for method in methods if len(overall[method].accepted_length_histogram) > 1]
    shown = drafting or methods
    panels = [(method, colors[method], overall[method].accepted_length_histogram,
               overall[method].mean_accepted_tokens) for method in shown]
    histogram = plots.histogram_chart(panels, directory / HISTOGRAM_PLOT,
                                      "Accepted draft tokens per step (share of steps)")
    return [speedup, histogram]


def _kernel(environment: dict) -> str:
    """`, linear layers on <kernel>` where the run recorded a kernel other than torch's own."""
    kernel = environment.get("linear_kernel")
    return f", linear layers on {kernel}" if kernel not in (None, "torch") else ""
