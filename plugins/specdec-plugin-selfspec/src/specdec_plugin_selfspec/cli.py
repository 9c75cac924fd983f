"""`specdec selfspec ...`: build token frequency tables, inspect what self-drafting costs here.

    specdec selfspec vocab --out table.json                  # the shipped table's recipe
    specdec selfspec vocab --out mine.json --model ./my-model --prompts prompts.jsonl
    specdec selfspec formats                                  # which copy format `auto` picks here

Kept light: argparse only; each handler imports torch when it runs.
"""

from __future__ import annotations

import argparse
import json


def add_commands(subparsers) -> None:
    selfspec = subparsers.add_parser("selfspec", help="self-speculation: token frequency tables, formats")
    commands = selfspec.add_subparsers(title="selfspec commands", metavar="COMMAND")
    selfspec.set_defaults(handler=lambda args: (selfspec.print_help(), 2)[1])

    vocab = commands.add_parser("vocab", help="count the target's own answer tokens into a frequency table "
                                              "(for vocab_size: the truncated draft vocabulary)")
    vocab.add_argument("--out", required=True, help="output .json table")
    vocab.add_argument("--model", help="target model path or id (default: the embedded default model)")
    vocab.add_argument("--prompts", help="prompt file, .jsonl (prompt / messages) or .txt (default: the plugin's set)")
    vocab.add_argument("--max-new-tokens", type=int, default=192)
    vocab.add_argument("--batch-size", type=int, default=16)
    vocab.add_argument("--limit", type=int, help="use only the first N prompts")
    vocab.add_argument("--quiet", action="store_true", help="no progress bar")
    vocab.set_defaults(handler=_vocab)

    formats = commands.add_parser("formats", help="say which format low_precision's `auto` picks on this machine")
    formats.add_argument("--device", default="cpu")
    formats.add_argument("--model", default=None,
                         help="on a CPU, the target whose first layer is timed (default: the embedded default model)")
    formats.set_defaults(handler=_formats)


def _vocab(args: argparse.Namespace) -> int:
    from specdec_plugin_selfspec.vocab import build_table, coverage

    table = build_table(args.out, model_name=args.model, prompts_path=args.prompts,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit,
                        progress=not args.quiet)
    source = table["source"]
    shares = coverage(table, (1024, 4096, 8192, 16384))
    print(f"wrote {args.out}: {source['counted_tokens']} answer tokens from {source['num_prompts']} prompts, "
          f"{source['distinct_tokens']} distinct; the N most frequent cover "
          + ", ".join(f"{share:.1%} (N={size})" for size, share in shares.items()))
    return 0


def _formats(args: argparse.Namespace) -> int:
    import torch

    from specdec import load_model
    from specdec_plugin_selfspec.formats import (auto_candidates, choose_format, cpu_flags, int8_available,
                                                 measure_formats, native_bfloat16)
    from specdec_plugin_selfspec.stack import check_architecture

    device = torch.device(args.device)
    flags = sorted(flag for flag in cpu_flags() if "bf16" in flag or "amx" in flag or "vnni" in flag)
    report = {"device": str(device), "native_bfloat16": native_bfloat16(device), "cpu_flags": flags,
              "quantized_engine": torch.backends.quantized.engine}
    auto = auto_candidates(device, torch.float32)[0]
    if device.type == "cpu":  # what `auto` measures: one layer's one-token products in each format
        model, _ = load_model(args.model, device=device, dtype="float32")
        check_architecture(model)
        formats = (("int8",) if int8_available() else ()) + ("bfloat16", "float32")
        seconds = measure_formats(model, formats)
        report["one_layer_microseconds"] = {fmt: round(value * 1e6, 1) for fmt, value in seconds.items()}
        auto = choose_format("auto", model, seconds)
    report["auto_format_for_float32_target"] = auto
    print(json.dumps(report, indent=2))
    return 0
