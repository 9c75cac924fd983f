"""`specdec typical measure`: how lossy typical acceptance is, next to what it gains.

    specdec typical measure                               # exact, on random logits (seconds)
    specdec typical measure --pipeline medusa.yaml --prompt "Explain tides." --temperature 0.7

Kept light: argparse only; the handler imports torch when it runs.
"""

from __future__ import annotations

import argparse
import json

from specdec_plugin_typical import DELTA, EPSILON


def add_commands(subparsers) -> None:
    typical = subparsers.add_parser("typical", help="typical acceptance (lossy): measure its cost and gain")
    commands = typical.add_subparsers(title="typical commands", metavar="COMMAND")
    typical.set_defaults(handler=lambda args: (typical.print_help(), 2)[1])

    measure = commands.add_parser(
        "measure", help="TV distance from plain sampling and accepted tokens, typical vs rejection")
    measure.add_argument("--epsilon", type=float, default=EPSILON)
    measure.add_argument("--delta", type=float, default=DELTA)
    measure.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.3, 0.7, 1.0],
                         help="temperatures of the exact random-logits table")
    measure.add_argument("--pipeline", help="also measure a real pipeline's drafter on --prompt texts")
    measure.add_argument("--prompt", action="append", default=[], help="user message (repeatable)")
    measure.add_argument("--temperature", type=float, default=0.7, help="sampling temperature for --pipeline")
    measure.add_argument("--max-new-tokens", type=int, default=128)
    measure.add_argument("--json", action="store_true")
    measure.set_defaults(handler=_measure)


def _measure(args: argparse.Namespace) -> int:
    from specdec import ConfigError

    from specdec_plugin_typical.lossiness import exact_table, measure_pipeline
    from specdec_plugin_typical.policy import TypicalAcceptance

    if not 0 < args.epsilon <= 1 or args.delta <= 0:
        raise ConfigError("--epsilon must be in (0, 1] and --delta > 0")
    rows = exact_table(temperatures=args.temperatures, epsilon=args.epsilon, delta=args.delta)
    report: dict = {"epsilon": args.epsilon, "delta": args.delta, "exact": rows}
    if args.pipeline:
        from specdec import Pipeline

        if not args.prompt:
            raise ConfigError("--pipeline needs at least one --prompt")
        pipeline = Pipeline.from_yaml(args.pipeline)
        prompts = [[{"role": "user", "content": text}] if getattr(pipeline.tokenizer, "chat_template", None)
                   else text for text in args.prompt]
        report["pipeline"] = {"file": args.pipeline, "temperature": args.temperature, **measure_pipeline(
            pipeline, prompts, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
            policy=TypicalAcceptance(args.epsilon, args.delta))}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"typical acceptance, epsilon={args.epsilon:g} delta={args.delta:g}: exact one-step comparison on "
          f"random logits (vocabulary 8, mean of 3 seeds, draft = target logits + noise, first 2 tokens)")
    print(f"{'logit scale':>11} {'T':>4}  {'draft':<26} {'TV(typical)':>11} {'TV(rejection)':>13} "
          f"{'accepted typical':>16} {'accepted rejection':>18}")
    for row in rows:
        print(f"{row['logit_scale']:>11g} {row['temperature']:>4g}  {row['draft']:<26} {row['tv']:>11.4f} "
              f"{row['tv_rejection']:>13.1e} {row['accepted_typical']:>16.3f} {row['accepted_rejection']:>18.3f}")
    if "pipeline" in report:
        found = report["pipeline"]
        print(f"\n{args.pipeline} at temperature {args.temperature:g} on {len(args.prompt)} prompt(s): mean "
              f"accepted tokens per step {found['mean_accepted_rejection']:.3f} (rejection) vs "
              f"{found['mean_accepted_typical']:.3f} (typical); typical's mean per-step first-token TV "
              f"{found['first_token_tv']:.4f} over {found['steps_measured']} steps")
    return 0
