"""The whole training recipe behind `specdec medusa train`, as one resumable function.

1. self-distillation (optional): the target answers a prompt set, once per temperature;
2. the target's final hidden states over all training text, computed once and cached;
3. heads trained on them (checkpointed), evaluated on held-out sequences;
4. a tree derived from the held-out accuracy; heads, tree, accuracy and recipe saved together.

Every stage leaves its result in the output folder and is skipped when found there, so an
interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from specdec import (InputError, cached_features, load_frozen_target, read_corpus, refuse_existing_run, self_distil,
                     target_signature)

from specdec_plugin_medusa import DEFAULT_TREE_NODES
from specdec_plugin_medusa.data import load_prompts, shipped_prompts_path
from specdec_plugin_medusa.features import Features, compute_features, features_key
from specdec_plugin_medusa.heads import load_heads, save_heads
from specdec_plugin_medusa.train import Trainer, TrainConfig, evaluate
from specdec_plugin_medusa.trees import derive_tree, expected_accepted_tokens

FEATURES_FILE = "features.pt"
HEADS_FOLDER = "heads"
REPORT_FILE = "report.json"
MAX_FUTURE = 9  # label width cached with the features: enough for up to 8 heads


def run_training(out: str | Path, *, model_name: str | None = None, data_files: Sequence[str] = (),
                 self_distill: bool = False, prompts: str | None = None,
                 distill_temperatures: Sequence[float] = (0.0,), max_new_tokens: int = 256,
                 distill_batch_size: int = 16, max_length: int = 1024, config: TrainConfig = TrainConfig(),
                 checkpoint_every: int = 200, resume: bool = False, tree_nodes: int = DEFAULT_TREE_NODES,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train Medusa heads for a target; returns the report also written to `out/report.json`.

    The trained heads land in `out/heads` (`config.json` + `heads.safetensors`), usable as
    `drafter: {type: medusa, params: {heads: <out>/heads}}`.
    """
    out = Path(out)
    refuse_existing_run(out, resume)
    if not data_files and not self_distill:
        raise InputError("give training data (--data FILE) and/or --self-distill")
    if config.num_heads > MAX_FUTURE - 1:
        raise InputError(f"at most {MAX_FUTURE - 1} heads are supported")
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    model, tokenizer, name = load_frozen_target(model_name, times)

    files = [str(path) for path in data_files]
    if self_distill:
        files += self_distil(model, tokenizer, load_prompts(prompts), out, temperatures=distill_temperatures,
                             times=times, log=log, max_new_tokens=max_new_tokens, batch_size=distill_batch_size,
                             seed=config.seed, progress=progress)

    sequences = read_corpus(files, tokenizer, max_length=max_length)
    signature = target_signature(model, name)

    def compute() -> Features:
        log(f"computing target hidden states over {sum(len(s.token_ids) for s in sequences)} tokens "
            f"in {len(sequences)} sequences")
        return compute_features(model, sequences, max_future=MAX_FUTURE, progress=progress)

    features = cached_features(Features, out / FEATURES_FILE, features_key(signature, sequences, MAX_FUTURE),
                               compute, times)

    trainer = Trainer(config, features, model.get_output_embeddings().weight, signature, out, model.device)
    accuracy = trainer.run(f"training {config.num_heads} heads on {len(trainer.train_index)} positions "
                           f"({len(trainer.eval_index)} held out), {trainer.total_steps} steps of "
                           f"{config.batch_size}, {trainer.dtype} matmuls",
                           resume=resume, checkpoint_every=checkpoint_every, progress=progress, log=log, times=times)
    tree = derive_tree(accuracy["per_rank"], tree_nodes)
    heads = trainer.heads
    heads.config.accuracy = accuracy
    heads.config.tree = tree
    heads.config.training = {
        "recipe": "Medusa-1 (frozen target), specdec-plugin-medusa",
        "data": [Path(path).name for path in files],
        "self_distillation": ({"prompts": Path(prompts).name if prompts else shipped_prompts_path().name,
                               "temperatures": list(distill_temperatures), "max_new_tokens": max_new_tokens}
                              if self_distill else None),
        "sequences": len(sequences),
        "positions": {"train": len(trainer.train_index), "held_out": len(trainer.eval_index)},
        "steps": trainer.step,
        "settings": asdict(config),
        "matmul_dtype": str(trainer.dtype).removeprefix("torch."),
        "seconds": times,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    save_heads(heads, out / HEADS_FOLDER)
    expected = round(expected_accepted_tokens(tree, accuracy["per_rank"]), 3)
    report = {"heads": str(out / HEADS_FOLDER), "accuracy": accuracy, "tree": tree, "tree_nodes": len(tree),
              "expected_accepted_tokens": expected, "training": heads.config.training}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def measure_accuracy(heads_name: str, data_files: Sequence[str], *, model_name: str | None = None,
                     top_k: int = 10, max_length: int = 1024, progress: bool = True) -> dict:
    """Per-head, per-rank accuracy of existing heads on some text (see `train.evaluate`)."""
    from specdec import load_model

    model, tokenizer = load_model(model_name)
    heads = load_heads(heads_name, model)
    sequences = read_corpus(list(data_files), tokenizer, max_length=max_length)
    features = compute_features(model, sequences, max_future=heads.num_heads + 1, progress=progress)
    with torch.inference_mode():
        return evaluate(heads, features, top_k=top_k)
