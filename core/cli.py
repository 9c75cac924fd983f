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
from typing import Sequence

from specdec.errors import ConfigError, SpecdecError

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
        print(f"specdec: error: {error}", file=sys.stderr)
        return 2
    except SpecdecError as error:
        print(f"specdec: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nspecdec: interrupted", file=sys.stderr)
        return 130


def _parser(plugins) -> argparse.ArgumentParser:
    from specdec.plugins import call_hook

    parser = argparse.ArgumentParser(prog="specdec", description="Lossless speculative decoding.")
    parser.add_argument("--version", action="version", version=f"specdec {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")

    generate = subparsers.add_parser("generate", help="generate text with a pipeline, streaming it")
    generate.add_argument("prompt", nargs="?", help="the user message (read from stdin when omitted)")
    generate.add_argument("--pipeline", "-p", help="pipeline YAML file (default: the embedded model "
                                                   "with prompt lookup)")
    generate.add_argument("--system", help="a system message to put before the prompt")
    generate.add_argument("--raw", action="store_true", help="feed the prompt as plain text, no chat template")
    _add_sampling_flags(generate)
    generate.add_argument("--no-stream", action="store_true", help="print the text only when done")
    generate.add_argument("--json", action="store_true", help="print one JSON object (text, ids, stats)")
    generate.set_defaults(handler=_generate)

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


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling overrides (default: the pipeline's sampling block)")
    group.add_argument("--temperature", "-t", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--top-p", type=float)
    group.add_argument("--seed", type=int)
    group.add_argument("--max-new-tokens", "-n", type=int)
    group.add_argument("--stop", action="append", help="stop string (repeatable)")


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

    if path:
        return Pipeline.from_yaml(path)
    return Pipeline.from_dict(default_pipeline_data(plugins or default_plugins()))


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


def _generate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ConfigError("the prompt is empty: pass it as an argument or on stdin")
    pipeline = build_pipeline(args.pipeline)
    try:
        overrides = sampling_overrides(args)
        pipeline.params(**overrides)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    if args.raw or not getattr(pipeline.tokenizer, "chat_template", None):
        request = prompt
    else:
        request = ([{"role": "system", "content": args.system}] if args.system else []) + \
                  [{"role": "user", "content": prompt}]
    stream = pipeline.stream(request, **overrides)
    quiet = args.no_stream or args.json
    for piece in stream:
        if not quiet:
            print(piece, end="", flush=True)
    result = stream.result
    if args.json:
        print(json.dumps({"text": result.text, "token_ids": result.token_ids,
                          "finish_reason": result.finish_reason, "stats": result.stats.to_dict()}))
        return 0
    if args.no_stream:
        print(result.text, end="")
    print()
    print(f"[{pipeline.config.label}] {result.stats.summary()}", file=sys.stderr)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
