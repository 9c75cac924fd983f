"""`specdec eagle ...`: train a draft model, export it to the EAGLE-3 layout.

    specdec eagle train --out runs/smollm --data distill-T0.jsonl --data distill-T0.7.jsonl
    specdec eagle train --out runs/mine --prompts prompts.jsonl --model ./my-model --style eagle3
    specdec eagle export --weights runs/mine/weights --out runs/mine/eagle3

Kept light: argparse only; each handler imports torch and the training code when it runs.
"""

from __future__ import annotations

import argparse


def add_commands(subparsers) -> None:
    eagle = subparsers.add_parser("eagle", help="EAGLE draft models: train them, export them")
    commands = eagle.add_subparsers(title="eagle commands", metavar="COMMAND")
    eagle.set_defaults(handler=lambda args: (eagle.print_help(), 2)[1])

    train = commands.add_parser("train", help="train a draft model on a frozen target's features")
    train.add_argument("--out", required=True, help="output folder (weights, checkpoints, cached features, report)")
    train.add_argument("--model", help="target model path or id (default: the embedded default model)")
    train.add_argument("--data", action="append", default=[], metavar="FILE",
                       help="training text: .jsonl (token_ids / messages / prompt+response / text) or .txt; "
                            "repeatable (`specdec medusa distill` writes the target's own answers)")
    train.add_argument("--prompts", help="also self-distil: the target answers this prompt file first")
    train.add_argument("--distill-temperatures", type=float, nargs="+", default=[0.0],
                       help="with --prompts: one answer per prompt at each temperature")
    train.add_argument("--max-new-tokens", type=int, default=256, help="answer length cap for self-distillation")
    train.add_argument("--style", choices=["eagle1", "eagle3"], default="eagle1",
                       help="eagle1: the final feature, regression + token loss; eagle3: low/mid/high layers, "
                            "token loss (exports to the EAGLE-3 layout)")
    train.add_argument("--layers", type=int, nargs="+",
                       help="target hidden_states indices to read (default: -1 for eagle1; 2, L/2, L-3 for eagle3)")
    train.add_argument("--draft-vocab", type=int,
                       help="draft over the N most frequent tokens of the training text (FR-Spec); default: all")
    train.add_argument("--levels", type=int, default=2, help="unrolled drafting levels trained (training-time test)")
    train.add_argument("--token-weight", type=float, default=0.1,
                       help="eagle1: weight of the token cross-entropy next to the feature regression")
    train.add_argument("--epochs", type=float, default=3.0)
    train.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per step")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--eval-fraction", type=float, default=0.05, help="share of sequences held out")
    train.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                       help="autocast precision while training (auto: bfloat16 where the hardware has it)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    export = commands.add_parser("export", help="write an eagle3-style draft model in the EAGLE-3 layout "
                                                "(SpecForge / EAGLE authors; read by vLLM and SGLang)")
    export.add_argument("--weights", default="default", help="shipped name or specdec draft model folder")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--model", help="the target it was trained for (default: the embedded default model)")
    export.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    export.set_defaults(handler=_export)


def _train(args: argparse.Namespace) -> int:
    from specdec_plugin_eagle.recipe import run_training
    from specdec_plugin_eagle.train import TrainConfig

    config = TrainConfig(levels=args.levels, epochs=args.epochs, token_weight=args.token_weight, batch_tokens=args.batch_tokens,
                         learning_rate=args.lr, eval_fraction=args.eval_fraction, seed=args.seed, dtype=args.dtype)
    report = run_training(args.out, model_name=args.model, data_files=args.data, prompts=args.prompts,
                          distill_temperatures=args.distill_temperatures, max_new_tokens=args.max_new_tokens,
                          style=args.style, feature_layers=args.layers, draft_vocab=args.draft_vocab,
                          config=config, checkpoint_every=args.checkpoint_every, resume=args.resume,
                          progress=not args.quiet)
    accuracy = report["accuracy"]
    print(f"draft model written to {report['weights']}")
    print("held-out top-1 accuracy by depth (whole chain right / given the previous depth right):")
    for depth, (chain, conditional) in enumerate(zip(accuracy["chain"], accuracy["conditional"]), start=1):
        print(f"  depth {depth}: {chain:.3f} / {conditional:.3f}")
    print(f"expected tokens per step of a greedy chain: {accuracy['expected_chain_tokens']}; "
          f"times {report['training']['seconds']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from specdec import load_model

    from specdec_plugin_eagle.checkpoints import export_eagle3, load_draft

    model, tokenizer = load_model(args.model)
    draft = load_draft(args.weights, model, tokenizer)
    folder = export_eagle3(draft, args.out, target=model, dtype=getattr(torch, args.dtype))
    print(f"EAGLE-3 checkpoint written to {folder}")
    return 0
