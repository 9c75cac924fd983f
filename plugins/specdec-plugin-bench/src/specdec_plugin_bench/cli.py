"""`specdec bench`: the command line of the benchmark.

    specdec bench --questions dev.jsonl --pipelines ar.yaml draft.yaml --limit 5 -n 128
    specdec bench --resume bench-results/20250101-120000 ...same arguments...
    specdec bench --report bench-results/20250101-120000     # rewrite the report, measure nothing
    torchrun --nproc-per-node 2 -m specdec.cli bench --tp-size 2 ...  # a sharded target (docs/scaling.md)

This module stays light (argparse only); the handler imports torch and the models.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from specdec import LINEAR_KERNELS, ConfigError, is_follower_rank, launched_ranks, with_tp_size

DESCRIPTION = """\
Spec-Bench-style benchmark: every method answers the same questions (multi-turn ones with its
own earlier answers), methods interleaved per question, and is compared with plain
autoregressive decoding (AR) of the same target run in the same invocation. Hugging Face
model.generate() baselines run on the same prompts. At temperature 0 every output must equal the
AR output; mismatches are counted and listed. Results go to --output: report.md, results.json,
records.jsonl, speedup.png and accepted_lengths.png.
"""


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to the `specdec` CLI's subparsers."""
    from specdec_plugin_bench.methods import DEFAULT_HF_BASELINES, HF_BASELINES

    parser = subparsers.add_parser("bench", help="benchmark pipelines against AR and Hugging Face baselines",
                                   description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", "-q", metavar="FILE",
                        help="questions in Spec-Bench's JSON Lines format (question_id, category, turns)")
    parser.add_argument("--pipelines", "-p", nargs="+", default=[], metavar="YAML",
                        help="pipeline files to compare (the AR baseline is added when none has drafter none; "
                             "default: AR on the default model)")
    parser.add_argument("--tasks", nargs="+", metavar="TASK",
                        help="tasks to run (mt_bench, translation, summarization, qa, math_reasoning, rag; "
                             "default: all in the file)")
    parser.add_argument("--limit", type=_positive, metavar="N", help="the first N questions of each task")
    parser.add_argument("--max-new-tokens", "-n", type=_positive, default=256, metavar="N",
                        help="tokens per answer, the same for every method (default 256)")
    parser.add_argument("--runs", type=_positive, default=1, metavar="R",
                        help="repeat the whole benchmark R times for a spread of the speedups (default 1)")
    parser.add_argument("--output", "-o", metavar="DIR",
                        help="output folder (default bench-results/<timestamp>)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue an earlier run in DIR, skipping the generations it has")
    parser.add_argument("--report", metavar="DIR", help="only rewrite DIR's report from its records")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--device", metavar="DEVICE",
                        help="run every pipeline's target on DEVICE (cpu, cuda, cuda:N, auto), replacing the "
                             "files' target.device (default: each file's own, cpu when it names none)")
    parser.add_argument("--tp-size", type=_positive, metavar="N",
                        help="shard every pipeline's target over N ranks: launch with torchrun --nproc-per-node N "
                             "(docs/scaling.md); rank 0 writes the results")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        help="the target's dtype for every pipeline, replacing the files' target.dtype")
    parser.add_argument("--linear-kernel", choices=LINEAR_KERNELS,
                        help="the kernel the target's float32 linear layers run on a CPU, for every pipeline, "
                             "replacing the files' target.linear_kernel (specdec.linear_kernels)")
    parser.add_argument("--batch-size", nargs="+", type=_positive, metavar="N",
                        help="measure throughput instead: every pipeline (AR included) at each batch size N, "
                             "first turns only (throughput.md, throughput.json, throughput.png)")
    hf = parser.add_argument_group("Hugging Face baselines")
    hf.add_argument("--hf-baselines", nargs="+", metavar="NAME",
                    help=f"any of {', '.join(HF_BASELINES)}, or none (default: {' '.join(DEFAULT_HF_BASELINES)}; "
                         "assisted only when a pipeline has a draft_model drafter)")
    hf.add_argument("--hf-prompt-lookup-tokens", type=_positive, default=10, metavar="N",
                    help="prompt_lookup_num_tokens (default 10)")
    hf.add_argument("--hf-assistant-tokens", type=_positive, metavar="N",
                    help="num_assistant_tokens for assisted generation (default: Hugging Face's)")
    hf.add_argument("--hf-early-exit", type=_positive, metavar="LAYER",
                    help="add assistant_early_exit=LAYER (only for models trained to exit early)")
    sampling = parser.add_argument_group("sampling (default greedy; temperature > 0 skips the equality check)")
    sampling.add_argument("--temperature", "-t", type=float, default=0.0)
    sampling.add_argument("--top-k", type=_positive)
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--seed", type=int)
    parser.set_defaults(handler=run_command)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_command(args: argparse.Namespace) -> int:
    """The `specdec bench` handler; returns the exit code (130 when interrupted).

    Under torchrun (`--tp-size N`, or pipelines with `target.tp_size: N`) every rank runs the same
    benchmark (its forwards are collective); rank 0 prints and writes the results, the other ranks
    write into a folder they delete.
    """
    if (args.tp_size or 1) > 1 or (launched_ranks() or 1) > 1:
        if args.resume or args.report:
            raise ConfigError("--resume and --report read a results folder that only rank 0 writes; run them "
                              "without --tp-size and torchrun (--report needs no model) or start a new benchmark")
        if is_follower_rank():
            return _follow(args)
    return _run(args)


def _follow(args: argparse.Namespace) -> int:
    """A rank other than 0: the same run, silent, into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="specdec-bench-rank-") as scratch, \
            open(os.devnull, "w", encoding="utf-8") as sink, \
            contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        args = copy.copy(args)
        args.output, args.no_progress = str(Path(scratch) / "results"), True
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from specdec_plugin_bench.report import write_report
    from specdec_plugin_bench.runner import CONFIG_FILE, RecordStore

    if args.report:
        directory = Path(args.report)
        meta = _read_config(directory)
        report = write_report(directory, RecordStore(directory).values(), meta)
        _print_summary(report, directory)
        return 0

    from pydantic import ValidationError

    from specdec import default_plugins
    from specdec_plugin_bench.methods import HFOptions, build_methods, plan_methods, target_description
    from specdec_plugin_bench.questions import load_questions, select_questions
    from specdec_plugin_bench.runner import BenchSettings, check_resumable, measure

    if not args.questions:
        raise ConfigError("specdec bench needs --questions FILE (Spec-Bench JSON Lines)")
    if args.batch_size:
        return _throughput(args)
    settings = BenchSettings(max_new_tokens=args.max_new_tokens, runs=args.runs, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    try:
        settings.params()
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    questions = select_questions(load_questions(args.questions), args.tasks, args.limit)

    plugins = default_plugins()
    validated = validated_pipelines(args.pipelines, plugins, _target_overrides(args))
    validated = [with_tp_size(item, None) for item in validated]  # refuses tp_size 1 under torchrun
    names = list(dict.fromkeys(args.hf_baselines or []))
    if "none" in names and names != ["none"]:
        raise ConfigError("--hf-baselines: 'none' cannot be combined with other baselines")
    hf = HFOptions(baselines=() if names == ["none"] else tuple(names) if names else HFOptions().baselines,
                   explicit=bool(names), prompt_lookup_tokens=args.hf_prompt_lookup_tokens,
                   assistant_tokens=args.hf_assistant_tokens, early_exit=args.hf_early_exit)
    plans = plan_methods(validated, plugins.registry, hf)
    baseline = plans[0].label

    directory = _output_folder(args)
    target = target_description(plans[0].pipeline)
    infos = [plan.info() for plan in plans]
    signatures = {}  # of every method ever measured in the folder, so a resume can refuse a changed one
    if args.resume:
        stored = _read_config(directory)
        check_resumable(stored, settings, target, infos)
        signatures.update(stored.get("signatures", {}))
    elif (directory / CONFIG_FILE).exists():
        raise ConfigError(f"{directory} already holds a benchmark; continue it with --resume {directory} "
                          "or choose another --output")
    meta = {
        "settings": {**settings.measured(), "runs": settings.runs, "questions": args.questions,
                     "tasks": args.tasks, "limit": args.limit, "hf_baselines": list(hf.baselines),
                     "hf_prompt_lookup_tokens": hf.prompt_lookup_tokens,
                     "hf_assistant_tokens": hf.assistant_tokens, "hf_early_exit": hf.early_exit},
        "target": target, "baseline": baseline, "methods": infos,
        "signatures": {**signatures, **{info["label"]: info["signature"] for info in infos}},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    directory.mkdir(parents=True, exist_ok=True)
    store = RecordStore(directory)
    if store.unreadable:
        print(f"specdec: warning: skipped {store.unreadable} unreadable line(s) of {store.path}", file=sys.stderr)
    interrupted = False
    try:
        methods = build_methods(plans, plugins)
        meta["environment"] = _environment(methods[0].pipeline)
        if args.resume:
            _check_same_kernel(stored, meta["environment"])
        for info, method in zip(infos, methods):
            if getattr(method, "built", None):
                info["built"] = method.built
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        print(f"specdec bench: {len(questions)} questions, methods {', '.join(plan.label for plan in plans)}; "
              f"writing to {directory}", file=sys.stderr)
        measure(methods, questions, settings, store, baseline, progress=not args.no_progress)
    except KeyboardInterrupt:
        interrupted = True
    except Exception:
        if len(store):  # a failure mid-run (a prompt too long for the model ...): report what was measured
            store.close()
            write_report(directory, store.values(), meta, interrupted=True)
            print(f"specdec: the run stopped; {len(store)} generations are kept in {directory}", file=sys.stderr)
        raise
    finally:
        store.close()
    if "environment" not in meta:  # interrupted while loading: keep the folder resumable anyway
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    report = write_report(directory, store.values(), meta, interrupted=interrupted)
    _print_summary(report, directory)
    if interrupted:
        print(f"specdec: interrupted; {len(store)} generations are kept in {directory}; continue with "
              f"--resume {directory}", file=sys.stderr)
        return 130
    return 0


def validated_pipelines(paths, plugins, target: dict | None = None) -> list:
    """Every pipeline file of --pipelines, validated (no model loads).

    :param target: `target` fields that replace the files' own (--device, --dtype): one set of
        pipeline files then benchmarks on a CPU or a GPU alike. With no files, the AR baseline on
        the default model gets them.
    """
    from specdec import load_yaml, validate_pipeline

    target = {key: value for key, value in (target or {}).items() if value is not None}
    if not paths and target:
        return [validate_pipeline({"name": "ar", "target": target, "drafter": {"type": "none"}},
                                  plugins.registry, "<automatic AR baseline>")]
    validated = []
    for path in paths:
        data, text = load_yaml(path)
        if target and isinstance(data, dict):
            data = {**data, "target": {**(data.get("target") or {}), **target}}
        validated.append(validate_pipeline(data, plugins.registry, path, text))
    return validated


def _throughput(args: argparse.Namespace) -> int:
    """`--batch-size`: every pipeline at every batch size (see `specdec_plugin_bench.throughput`)."""
    from specdec import Pipeline, SamplingParams, default_plugins, validate_pipeline
    from specdec_plugin_bench.questions import load_questions, select_questions
    from specdec_plugin_bench.throughput import markdown, measure_throughput, write_throughput

    if args.resume or args.report or args.runs != 1:
        raise ConfigError("--batch-size measures throughput in one go: leave out --resume, --report and --runs")
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            max_new_tokens=args.max_new_tokens)
    questions = select_questions(load_questions(args.questions), args.tasks, args.limit)
    plugins = default_plugins()
    validated = [with_tp_size(item, None) for item in
                 validated_pipelines(args.pipelines, plugins, _target_overrides(args))]
    target = validated[0].spec.target.model_dump() if validated else {}
    if not any(item.spec.drafter.type == "none" for item in validated):
        validated.insert(0, validate_pipeline({"name": "AR", "target": target, "drafter": {"type": "none"}},
                                              plugins.registry, "<AR>"))
    else:  # the plain-decoding pipeline goes first: it is the baseline
        validated.sort(key=lambda item: item.spec.drafter.type != "none")
    first = Pipeline(validated[0], plugins)
    pipelines = [first] + [Pipeline(item, plugins, model=first.model, tokenizer=first.tokenizer)
                           for item in validated[1:]]
    labels = [item.label for item in validated]
    directory = _output_folder(args)
    sizes = sorted(set(args.batch_size))
    print(f"specdec bench: throughput of {', '.join(labels)} at batch sizes {sizes} on {len(questions)} "
          f"questions; writing to {directory}", file=sys.stderr)
    summary = measure_throughput(pipelines, labels, questions, sizes, params,
                                 progress=(lambda line: None) if args.no_progress else
                                 (lambda line: print(line, file=sys.stderr)))
    meta = {"settings": {"questions": args.questions, "tasks": args.tasks, "limit": args.limit,
                         **params.model_dump(mode="json")},
            "environment": _environment(first), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    files = write_throughput(directory, summary, meta)
    print(markdown(summary))
    print("files: " + ", ".join(str(path) for path in files))
    return 0


def _target_overrides(args: argparse.Namespace) -> dict:
    """The `target` fields the flags set over every pipeline file's own."""
    return {"device": args.device, "dtype": args.dtype, "tp_size": args.tp_size,
            "linear_kernel": args.linear_kernel}


def _output_folder(args: argparse.Namespace) -> Path:
    if args.resume:
        directory = Path(args.resume)
        if args.output and Path(args.output) != directory:
            raise ConfigError("--resume DIR writes to DIR; leave out --output or give the same folder")
        if not directory.is_dir():
            raise ConfigError(f"--resume: no folder {directory}")
        return directory
    if args.output:
        return Path(args.output)
    base = Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    directory, counter = base, 1
    while directory.exists():
        counter += 1
        directory = base.with_name(f"{base.name}-{counter}")
    return directory


def _check_same_kernel(stored: dict, environment: dict) -> None:
    """A resumed run measures on the linear kernel its first part did (`auto` may choose another
    on a busier or different machine: its records would not compare)."""
    before = stored.get("environment", {}).get("linear_kernel")
    if before is not None and before != environment["linear_kernel"]:
        raise ConfigError(f"the records were measured with the target's linear layers on {before!r}, this run "
                          f"chose {environment['linear_kernel']!r}: resume with --linear-kernel {before}")


def _read_config(directory: Path) -> dict:
    from specdec_plugin_bench.runner import CONFIG_FILE

    path = directory / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"{directory} holds no benchmark ({CONFIG_FILE} is missing)") from None
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None


def _environment(pipeline) -> dict:
    import torch
    import transformers

    from specdec import __version__

    device = pipeline.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {"device": str(device), "device_name": name, "linear_kernel": pipeline.linear_kernel,
            "torch_threads": torch.get_num_threads(),
            "specdec": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def _print_summary(report, directory: Path) -> None:
    print(report.overall_table())
    print()
    print("files: " + ", ".join(str(path) for path in [*report.files, directory / "records.jsonl"]))
    if report.mismatches:
        print(f"specdec: warning: {len(report.mismatches)} generation(s) differ from the AR output; "
              f"see {directory / 'report.md'}", file=sys.stderr)
