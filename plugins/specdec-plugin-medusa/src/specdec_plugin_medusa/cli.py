"""`specdec medusa ...`: train heads, self-distil data, derive trees.

    specdec medusa train --out runs/smollm --self-distill                 # the shipped recipe
    specdec medusa train --out runs/mine --data chats.jsonl --model ./my-model
    specdec medusa distill --out answers.jsonl --temperature 0.7
    specdec medusa tree --heads default --nodes 16                        # from stored accuracy
    specdec medusa tree --heads runs/mine/heads --data heldout.jsonl      # measure, then derive

Kept light: argparse only; each handler imports torch and the training code when it runs.
"""

from __future__ import annotations

import argparse
import json

from specdec_plugin_medusa import DEFAULT_TREE_NODES


def add_commands(subparsers) -> None:
    medusa = subparsers.add_parser("medusa", help="Medusa heads: train them, self-distil data, derive trees")
    commands = medusa.add_subparsers(title="medusa commands", metavar="COMMAND")
    medusa.set_defaults(handler=lambda args: (medusa.print_help(), 2)[1])

    train = commands.add_parser("train", help="train heads on a frozen target (Medusa-1)")
    train.add_argument("--out", required=True, help="output folder (heads, checkpoints, cached features, report)")
    train.add_argument("--model", help="target model path or id (default: the embedded default model)")
    train.add_argument("--data", action="append", default=[], metavar="FILE",
                       help="training text: .jsonl (token_ids / messages / prompt+response / text) or .txt; repeatable")
    train.add_argument("--self-distill", action="store_true",
                       help="also train on the target's own answers to a prompt set")
    train.add_argument("--prompts", help="prompt file for --self-distill (default: the plugin's own set)")
    train.add_argument("--distill-temperatures", type=float, nargs="+", default=[0.0],
                       help="one answer per prompt at each temperature (default: 0 = greedy)")
    train.add_argument("--max-new-tokens", type=int, default=256, help="answer length cap for self-distillation")
    train.add_argument("--distill-batch-size", type=int, default=16)
    train.add_argument("--max-length", type=int, default=1024, help="longer sequences are cut into windows")
    train.add_argument("--num-heads", type=int, default=4)
    train.add_argument("--num-layers", type=int, default=1, help="residual blocks per head")
    train.add_argument("--own-lm-head", action="store_true",
                       help="give each head its own vocabulary projection (large) instead of the frozen target's")
    train.add_argument("--epochs", type=float, default=2.0)
    train.add_argument("--batch-size", type=int, default=256, help="positions per step")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--eval-fraction", type=float, default=0.05, help="share of sequences held out")
    train.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                       help="matmul precision while training (auto: bfloat16 where the hardware has it)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--tree-nodes", type=int, default=DEFAULT_TREE_NODES,
                       help="node budget of the recommended tree (default: the fastest one measured on a CPU, "
                            "see the README's 'Measured speed'; where verifying more tokens is nearly free, "
                            "as on a GPU, larger trees pay)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    distill = commands.add_parser("distill", help="write the target's own answers to a prompt set as JSONL")
    distill.add_argument("--out", required=True, help="output .jsonl file")
    distill.add_argument("--model", help="target model path or id (default: the embedded default model)")
    distill.add_argument("--prompts", help="prompt file (default: the plugin's own set)")
    distill.add_argument("--temperature", type=float, default=0.0)
    distill.add_argument("--max-new-tokens", type=int, default=256)
    distill.add_argument("--batch-size", type=int, default=16)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--quiet", action="store_true")
    distill.set_defaults(handler=_distill)

    tree = commands.add_parser("tree", help="derive a token tree from per-head top-k accuracy")
    tree.add_argument("--heads", default="default", help="shipped heads name or heads folder")
    tree.add_argument("--nodes", type=int, nargs="+", default=[DEFAULT_TREE_NODES], help="node budget(s)")
    tree.add_argument("--max-depth", type=int, help="deepest path (default: one level per head)")
    tree.add_argument("--data", action="append", default=[], metavar="FILE",
                      help="measure accuracy on this text first (needs the target) instead of the stored one")
    tree.add_argument("--model", help="target model for --data (default: the embedded default model)")
    tree.add_argument("--json", action="store_true", help="print JSON only")
    tree.set_defaults(handler=_tree)


def _train(args: argparse.Namespace) -> int:
    from specdec_plugin_medusa.recipe import run_training
    from specdec_plugin_medusa.train import TrainConfig

    config = TrainConfig(num_heads=args.num_heads, num_layers=args.num_layers, own_lm_head=args.own_lm_head,
                         epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                         eval_fraction=args.eval_fraction, seed=args.seed, dtype=args.dtype)
    report = run_training(
        args.out, model_name=args.model, data_files=args.data, self_distill=args.self_distill,
        prompts=args.prompts, distill_temperatures=args.distill_temperatures,
        max_new_tokens=args.max_new_tokens, distill_batch_size=args.distill_batch_size,
        max_length=args.max_length, config=config, checkpoint_every=args.checkpoint_every,
        resume=args.resume, tree_nodes=args.tree_nodes, progress=not args.quiet)
    accuracy = report["accuracy"]
    print(f"heads written to {report['heads']}")
    print("held-out accuracy per head (top-1 / top-%d):" % accuracy["top_k"])
    for head, (top1, topk) in enumerate(zip(accuracy["top1"], accuracy["topk"])):
        print(f"  head {head} (token t+{head + 2}): {top1:.3f} / {topk:.3f}")
    print(f"recommended tree: {report['tree_nodes']} nodes, expected {report['expected_accepted_tokens']} "
          f"tokens per step; times {report['training']['seconds']}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from specdec import load_model

    from specdec import distill, write_jsonl
    from specdec_plugin_medusa.data import load_prompts

    conversations = load_prompts(args.prompts)
    model, tokenizer = load_model(args.model)
    count = write_jsonl(distill(model, tokenizer, conversations, max_new_tokens=args.max_new_tokens,
                                batch_size=args.batch_size, temperature=args.temperature, seed=args.seed,
                                progress=not args.quiet), args.out)
    print(f"wrote {count} answers to {args.out}")
    return 0


def _tree(args: argparse.Namespace) -> int:
    from specdec import InputError

    from specdec_plugin_medusa.heads import read_config, resolve_heads
    from specdec_plugin_medusa.trees import derive_tree, expected_accepted_tokens

    if args.data:
        from specdec_plugin_medusa.recipe import measure_accuracy

        accuracy = measure_accuracy(args.heads, args.data, model_name=args.model, progress=not args.json)
    else:
        accuracy = read_config(resolve_heads(args.heads)).accuracy
        if not accuracy:
            raise InputError(f"heads '{args.heads}' record no accuracy; measure it with --data FILE")
    trees = []
    for budget in args.nodes:
        paths = derive_tree(accuracy["per_rank"], budget, args.max_depth)
        trees.append({"nodes": len(paths), "expected_accepted_tokens":
                      round(expected_accepted_tokens(paths, accuracy["per_rank"]), 3), "tree": paths})
    if args.json:
        print(json.dumps({"accuracy": accuracy, "trees": trees}))
        return 0
    print("accuracy per head (top-1 / top-%d): %s" % (accuracy["top_k"], ", ".join(
        f"{top1:.3f}/{topk:.3f}" for top1, topk in zip(accuracy["top1"], accuracy["topk"]))))
    for item in trees:
        print(f"{item['nodes']} nodes, expected {item['expected_accepted_tokens']} tokens per step:")
        print(f"  tree: {json.dumps(item['tree'])}")
    return 0
