"""The `specdec` command line.

    specdec generate "Why is the sky blue?" [--pipeline file.yaml] [--temperature 0.7 ...]
    specdec plugins [--json]
    specdec validate pipeline.yaml [...]

Plugins add subcommands through the `register_commands` hook. User errors print one clear
message (no traceback) and exit with status 2 (bad usage or configuration) or 1 (anything else
specdec refuses at run time); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import NoReturn, Sequence

from specdec.errors import ConfigError, SpecdecError
from specdec.launch import launched_rank, launched_ranks

#: Used when `specdec generate` gets no --pipeline: the default model and plain decoding, with
#: the sections a plugin offers through the `default_pipeline` hook merged over it.
DEFAULT_PIPELINE = {
    "name": "default",
    "drafter": {"type": "none"},
    "acceptance": {"type": "rejection"},
    "sampling": {"temperature": 0.0, "max_new_tokens": 256},
}


def main(argv: Sequence[str] | None = None, plugins=None) -> int:
    """Run the CLI; `plugins` (a `PluginSet`) defaults to the installed plugins."""
    logging.basicConfig(level=logging.WARNING, format="specdec: %(levelname)s: %(message)s")
    from specdec.plugins import default_plugins

    plugins = plugins or default_plugins()
    parser = _parser(plugins)
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"specdec: error: {_rank_prefix()}{error}", file=sys.stderr)
        return 2
    except SpecdecError as error:
        print(f"specdec: error: {_rank_prefix()}{error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nspecdec: interrupted", file=sys.stderr)
        return 130


def _rank_prefix() -> str:
    """"rank R: " in a process that torchrun started with other ranks (each may fail for its own reason)."""
    rank = launched_rank()
    return f"rank {rank}: " if rank is not None else ""


def _parser(plugins) -> argparse.ArgumentParser:
    from specdec.plugins import call_hook

    parser = argparse.ArgumentParser(prog="specdec", description="Lossless speculative decoding.")
    parser.add_argument("--version", action="version", version=f"specdec {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")

    generate = subparsers.add_parser("generate", help="generate text with a pipeline, streaming it")
    generate.add_argument("prompt", nargs="*", help="the user message (read from stdin when omitted); "
                                                    "several prompts are generated together in batches")
    generate.add_argument("--prompts-file", metavar="FILE.jsonl",
                          help="one prompt per line: a JSON string or an object with a 'prompt' key; "
                               "generated in batches, printed as JSON lines in the same order")
    generate.add_argument("--batch-size", type=int, metavar="N",
                          help="most prompts decoded together (default: the pipeline's scheduler.max_batch_size)")
    generate.add_argument("--pipeline", "-p", help="pipeline YAML file (default: the embedded model "
                                                   "with prompt lookup)")
    generate.add_argument("--system", help="a system message to put before the prompt")
    add_tp_size_flag(generate)
    generate.add_argument("--raw", action="store_true", help="feed the prompt as plain text, no chat template")
    _add_sampling_flags(generate)
    generate.add_argument("--no-stream", action="store_true", help="print the text only when done")
    generate.add_argument("--json", action="store_true", help="print one JSON object (text, ids, stats)")
    generate.set_defaults(handler=lambda args: _generate(args, plugins))

    listing = subparsers.add_parser("plugins", help="list installed plugins and their components")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=lambda args: _plugins(args, plugins))

    validate = subparsers.add_parser("validate", help="check pipeline files without loading models")
    validate.add_argument("files", nargs="+", help="pipeline YAML files")
    validate.set_defaults(handler=lambda args: _validate(args, plugins))

    for implementation in plugins.manager.hook.register_commands.get_hookimpls():
        try:
            call_hook(implementation, subparsers=subparsers)
        except Exception as error:  # noqa: BLE001 - a broken plugin must not break the CLI
            print(f"specdec: warning: plugin '{implementation.plugin_name}' failed to add its "
                  f"commands: {type(error).__name__}: {error}", file=sys.stderr)
    return parser


def add_tp_size_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tp-size", type=int, metavar="N",
                        help="shard the target over N ranks (tensor parallel; launch with torchrun "
                             "--nproc-per-node N, docs/scaling.md); overrides the pipeline's target.tp_size")


def with_tp_size(validated, tp_size: int | None):
    """The validated pipeline with `target.tp_size` set by --tp-size (unchanged when None).

    Refuses a one-rank target in a process that torchrun started with others: each would decode
    the whole model alone and print the same text.
    """
    import dataclasses

    if tp_size is not None:
        if tp_size < 1:
            raise ConfigError(f"--tp-size must be >= 1, got {tp_size}")
        spec = validated.spec
        target = spec.target.model_copy(update={"tp_size": tp_size})
        validated = dataclasses.replace(validated, spec=spec.model_copy(update={"target": target}))
    world = launched_ranks() or 1
    if validated.spec.target.tp_size == 1 and world > 1:
        raise ConfigError(f"torchrun started {world} processes but {validated.source} has target.tp_size 1: "
                          f"pass --tp-size {world} to shard the target over them (docs/scaling.md), or run "
                          f"specdec without torchrun")
    return validated


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling overrides (default: the pipeline's sampling block)")
    group.add_argument("--temperature", "-t", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--top-p", type=float)
    group.add_argument("--seed", type=int)
    group.add_argument("--max-new-tokens", "-n", type=int)
    group.add_argument("--stop", action="append", help="stop string (repeatable)")


#: The flag that sets each `SamplingParams` field, to name it in messages.
SAMPLING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "seed": "--seed",
                  "max_new_tokens": "--max-new-tokens", "stop_strings": "--stop"}


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling flags a user actually gave, as `SamplingParams` fields."""
    overrides = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                 "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                 "stop_strings": tuple(args.stop) if args.stop else None}
    return {key: value for key, value in overrides.items() if value is not None}


def build_pipeline(path: str | None, plugins=None):
    """The pipeline of a file, or the default pipeline when no file is given."""
    from specdec.pipeline import Pipeline
    from specdec.plugins import default_plugins

    plugins = plugins or default_plugins()
    return Pipeline(validated_pipeline(path, plugins), plugins)


def validated_pipeline(path: str | None, plugins):
    """The validated pipeline of a file, or of the default pipeline; loads no model."""
    from specdec.config import load_yaml, validate_pipeline

    if path:
        data, text = load_yaml(path)
        return validate_pipeline(data, plugins.registry, path, text)
    return validate_pipeline(default_pipeline_data(plugins), plugins.registry, "<default pipeline>")


def default_pipeline_data(plugins) -> dict:
    """`DEFAULT_PIPELINE` with the first plugin offer merged over it, section by section."""
    data = dict(DEFAULT_PIPELINE)
    if not plugins.default_pipelines:
        print("specdec: note: no installed plugin offers a default pipeline; decoding without a "
              "drafter", file=sys.stderr)
        return data
    (plugin, offer), *others = plugins.default_pipelines
    if others:
        print(f"specdec: note: using the default pipeline of plugin '{plugin}' (also offered by "
              f"{', '.join(name for name, _ in others)})", file=sys.stderr)
    data.update(offer)
    return data


def check_sampling_flags(validated, args: argparse.Namespace) -> dict:
    """The sampling overrides the flags give, checked against the pipeline's sampling block and its
    acceptance policy before any model loads; a `ConfigError` names the flag to fix."""
    from pydantic import ValidationError

    from specdec.config import sampling_problem
    from specdec.params import SamplingParams, describe_errors

    overrides = sampling_overrides(args)
    try:
        params = SamplingParams(**{**validated.spec.sampling.model_dump(), **overrides})
    except ValidationError as error:
        raise ConfigError("\n".join(f"{SAMPLING_FLAGS.get(name, name)}: {message}"
                                     for name, message in describe_errors(error))) from None
    problem = sampling_problem(validated.acceptance_params, params)
    if problem:
        flag = " (from --temperature)" if "temperature" in overrides else ""
        raise ConfigError(f"{validated.source}: acceptance{flag}: {problem}")
    return overrides


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts from argv, --prompts-file or stdin, refused (ConfigError) when empty or not UTF-8.

    Python hands undecodable argv bytes over as lone surrogates, which tokenizers reject with a
    TypeError; stdin is read as bytes and decoded here for the same reason.
    """
    from specdec.pipeline import check_text

    several = len(args.prompt) > 1
    prompts = [(prompt, f"prompt argument {index + 1}" if several else "the prompt argument")
               for index, prompt in enumerate(args.prompt)]
    if args.prompts_file:
        prompts += [(prompt, f"a prompt in {args.prompts_file}") for prompt in read_prompts_file(args.prompts_file)]
    if not prompts:
        prompts = [(_read_stdin(), "the prompt on stdin")]
    for text, what in [*prompts, (args.system, "--system"), *((stop, "--stop") for stop in args.stop or ())]:
        if text is not None:
            try:
                check_text(text, what)
            except SpecdecError as error:
                raise ConfigError(str(error)) from None
    if any(not prompt.strip() for prompt, _ in prompts):
        raise ConfigError("the prompt is empty: pass it as an argument or on stdin")
    return [prompt for prompt, _ in prompts]


def _read_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # replaced by a text stream (tests, embedding)
        return sys.stdin.read()
    raw = stream.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"the prompt on stdin is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
                          f"{error.start}); convert it to UTF-8, e.g. with iconv") from None


def read_prompts_file(path: str) -> list[str]:
    """Prompts of a JSON Lines file: each line a JSON string or an object with a "prompt" string."""
    from specdec.errors import InputError
    from specdec.jsonl import read_json_lines

    prompts = []
    try:
        for number, item in read_json_lines(path):
            if isinstance(item, dict):
                item = item.get("prompt")
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(f"{path}:{number}: each line must be a non-empty JSON string or an object "
                                  f"with a non-empty \"prompt\" string")
            prompts.append(item)
    except OSError as error:
        raise ConfigError(f"cannot read --prompts-file {path}: {error.strerror or error}") from None
    except InputError as error:  # not JSON, not UTF-8: a usage error of the flag
        raise ConfigError(f"--prompts-file {error}") from None
    if not prompts:
        raise ConfigError(f"--prompts-file {path} holds no prompts")
    return prompts


def _generate(args: argparse.Namespace, plugins) -> int:
    from specdec.pipeline import Pipeline

    # everything a user can get wrong is checked before the model loads (seconds to minutes)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    validated = with_tp_size(validated_pipeline(args.pipeline, plugins), args.tp_size)
    if validated.spec.target.tp_size > 1 and not args.prompt and not args.prompts_file:
        raise ConfigError("under torchrun every rank reads the prompt, and stdin reaches them all at once: "
                          "pass the prompt as an argument or with --prompts-file")
    prompts = read_prompts(args)
    overrides = check_sampling_flags(validated, args)
    pipeline = Pipeline(validated, plugins)
    # the other ranks of a tensor-parallel job compute the same text; rank 0 alone shows it
    show = _silent if pipeline.tp is not None and not pipeline.tp.is_main else print
    if args.batch_size is not None:
        pipeline.scheduler.max_batch_size = args.batch_size
    requests = [_request(pipeline, prompt, args) for prompt in prompts]
    if len(requests) > 1 or args.prompts_file:
        return _generate_batch(pipeline, requests, overrides, args, show)
    stream = pipeline.stream(requests[0], **overrides)
    quiet = args.no_stream or args.json
    for piece in stream:
        if not quiet:
            show(piece, end="", flush=True)
    result = stream.result
    if args.json:
        show(json.dumps({"text": result.text, "token_ids": result.token_ids,
                         "finish_reason": result.finish_reason, "stats": result.stats.to_dict()}))
        return 0
    if args.no_stream:
        show(result.text, end="")
    show()
    show(f"[{pipeline.config.label}] {result.stats.summary()}", file=sys.stderr)
    return 0


def _request(pipeline, prompt: str, args: argparse.Namespace):
    """A prompt as the pipeline takes it: chat messages when the model has a chat template."""
    if args.raw or not getattr(pipeline.tokenizer, "chat_template", None):
        return prompt
    return ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": prompt}]


def _silent(*args, **kwargs) -> None:
    """`print` on the ranks of a tensor-parallel job other than rank 0."""


def _generate_batch(pipeline, requests: list, overrides: dict, args: argparse.Namespace, show=print) -> int:
    """Several prompts, decoded together: one JSON line per prompt with --json, else each text."""
    import time

    from specdec.stats import GenerationStats, tokens_per_second

    started = time.perf_counter()
    results = pipeline.generate_batch(requests, **overrides)
    elapsed = time.perf_counter() - started
    for index, result in enumerate(results):
        if args.json or args.prompts_file:
            show(json.dumps({"index": index, "text": result.text, "token_ids": result.token_ids,
                             "finish_reason": result.finish_reason, "stats": result.stats.to_dict()}))
        else:
            show(f"--- [{index}]\n{result.text}")
    total = GenerationStats()
    for result in results:
        total = total.merge(result.stats)
    show(f"[{pipeline.config.label}] {len(results)} prompts, {total.new_tokens} tokens in {elapsed:.2f} s "
         f"({tokens_per_second(total.new_tokens, elapsed):.1f} tok/s over all sequences, batches of up to "
         f"{pipeline.scheduler.max_batch_size}), mean accepted tokens {total.mean_accepted_tokens:.2f}",
         file=sys.stderr)
    return 0


def _plugins(args: argparse.Namespace, plugins) -> int:
    registry = plugins.registry
    rows = []
    for info in plugins.plugins:
        components = [
            {"kind": component.kind, "name": component.name, "description": component.description,
             **({"lossless": component.lossless} if component.kind == "acceptance" else {})}
            for kind in registry.components.values() for component in kind.values()
            if component.plugin == info.name]
        rows.append({"name": info.name, "distribution": info.distribution, "version": info.version,
                     "builtin": info.builtin, "components": components})
    failures = [{"name": failure.name, "distribution": failure.distribution, "stage": failure.stage,
                 "error": failure.error} for failure in plugins.failures]
    if args.json:
        print(json.dumps({"plugins": rows, "failures": failures}, indent=2))
        return 0
    for row in rows:
        origin = "built-in" if row["builtin"] else f"{row['distribution']} {row['version']}"
        print(f"{row['name']} ({origin})")
        for component in row["components"]:
            flag = ""
            if component["kind"] == "acceptance":
                flag = " [lossless]" if component["lossless"] else " [LOSSY under sampling]"
            print(f"  {component['kind']:<10} {component['name']:<16}{flag} {component['description']}")
    for failure in plugins.failures:
        print(f"FAILED {failure}")
    return 0


def _validate(args: argparse.Namespace, plugins) -> int:
    from specdec.config import load_yaml, validate_pipeline

    status = 0
    for path in args.files:
        try:
            data, text = load_yaml(path)
            validated = validate_pipeline(data, plugins.registry, path, text)
        except ConfigError as error:
            print(error, file=sys.stderr)
            status = 2
            continue
        spec = validated.spec
        print(f"{path}: ok (drafter {spec.drafter.type}, verifier {spec.verifier.type}, "
              f"acceptance {spec.acceptance.type}, target {spec.target.model or 'default model'})")
    for failure in plugins.failures:
        print(f"specdec: warning: {failure}", file=sys.stderr)
    return status


def _version() -> str:
    from specdec import __version__

    return __version__


def run() -> NoReturn:
    """The `specdec` command: `main()`, then exit with its status (`exit_rank` ends a rank of a
    tensor-parallel job so that gloo's threads cannot abort it during interpreter shutdown)."""
    from specdec.distributed import exit_rank

    exit_rank(main())


if __name__ == "__main__":  # pragma: no cover
    run()
