"""`specdec retrieval ...`: build and inspect REST datastores.

    specdec retrieval build CORPUS... [--pipeline P.yaml | --tokenizer NAME_OR_PATH] -o STORE
    specdec retrieval self-distill -o STORE [--prompts FILE] [--model NAME | --pipeline P.yaml]
    specdec retrieval info STORE [--verify] [--json]

Argument parsing only here; the handlers import the heavy modules.
"""

from __future__ import annotations

import argparse
import json


def add_commands(subparsers) -> None:
    retrieval = subparsers.add_parser("retrieval", help="build and inspect REST datastores (specdec-plugin-retrieval)")
    commands = retrieval.add_subparsers(title="retrieval commands", metavar="COMMAND")
    retrieval.set_defaults(handler=lambda args: _usage(retrieval))

    build = commands.add_parser("build", help="build a datastore from local text, JSONL or chat files")
    build.add_argument("corpus", nargs="+", metavar="CORPUS",
                       help="files or folders: .jsonl (text field or chat messages), .json, or plain text")
    _add_model_choice(build, "--tokenizer", "tokenizer (model name or path) to tokenize with")
    build.add_argument("-o", "--output", required=True, metavar="STORE", help="store folder to create")
    build.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    build.add_argument("--no-chat-template", action="store_true",
                       help="store chat messages as plain texts instead of rendering them with the chat template")
    build.add_argument("--overwrite", action="store_true", help="replace an existing store")
    build.set_defaults(handler=_build)

    distill = commands.add_parser("self-distill", help="answer a prompt set with the model and build a "
                                                       "datastore from its answers (no download)")
    distill.add_argument("-o", "--output", required=True, metavar="STORE", help="store folder to create")
    distill.add_argument("--prompts", help="JSONL ('prompt' or 'messages' per line) or text file, one prompt "
                                           "a line (default: the prompt set shipped with the plugin)")
    _add_model_choice(distill, "--model", "model that answers (default: the default model)")
    distill.add_argument("--corpus", help="JSONL file collecting the answers; an interrupted run resumes "
                                          "from it (default: STORE.corpus.jsonl)")
    distill.add_argument("--max-new-tokens", type=int, default=384, help="answer length limit (default 384)")
    distill.add_argument("--batch-size", type=int, default=8, help="prompts answered together (default 8)")
    distill.add_argument("--limit", type=int, help="answer only the first N prompts")
    distill.add_argument("--overwrite", action="store_true", help="replace an existing store")
    distill.set_defaults(handler=_self_distill)

    info = commands.add_parser("info", help="describe a datastore and check its files")
    info.add_argument("store", metavar="STORE")
    info.add_argument("--verify", action="store_true", help="also check every file's sha256 (reads it all)")
    info.add_argument("--json", action="store_true", help="print meta.json")
    info.set_defaults(handler=_info)


def _add_model_choice(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pipeline", "-p", help="use the target model of this pipeline file")
    group.add_argument(flag, dest="model", help=f"{help_text} (default: the default model's)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _model_name(args: argparse.Namespace) -> str | None:
    if not args.pipeline:
        return args.model
    from specdec import load_yaml, validate_pipeline
    from specdec import default_plugins

    data, text = load_yaml(args.pipeline)
    return validate_pipeline(data, default_plugins().registry, args.pipeline, text).spec.target.model


def _build(args: argparse.Namespace) -> int:
    from specdec_plugin_retrieval.corpus import build_from_corpus, load_tokenizer

    tokenizer = load_tokenizer(_model_name(args))
    store = build_from_corpus(args.corpus, tokenizer, args.output, text_field=args.text_field,
                              chat_template=not args.no_chat_template, overwrite=args.overwrite, progress=True)
    print(store.summary())
    return 0


def _self_distill(args: argparse.Namespace) -> int:
    from specdec import ConfigError
    from specdec_plugin_retrieval.self_distill import self_distill

    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size),
                        ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1")
    store = self_distill(args.output, prompts_path=args.prompts, model_name=_model_name(args),
                         corpus_path=args.corpus, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, limit=args.limit, overwrite=args.overwrite)
    print(store.summary())
    return 0


def _info(args: argparse.Namespace) -> int:
    from specdec_plugin_retrieval.store import open_store

    store = open_store(args.store, verify=args.verify)
    print(json.dumps(store.meta, indent=1) if args.json else store.summary()
          + ("; sha256 verified" if args.verify else ""))
    return 0
