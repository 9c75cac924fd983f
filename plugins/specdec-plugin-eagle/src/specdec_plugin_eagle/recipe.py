"""The whole training recipe behind `specdec eagle train`, as one resumable function.

1. self-distillation (optional): the target answers a prompt set, once per temperature;
2. the target's features over all training text, computed once and cached;
3. the draft vocabulary: the most frequent tokens of the training text (FR-Spec) or all of them;
4. the draft model trained on the features (checkpointed), evaluated on held-out sequences;
5. model, accuracy and recipe saved together in `out/weights`.

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

from specdec import (InputError, cached_features, load_frozen_target, read_chat_prompts, read_corpus,
                     refuse_existing_run, self_distil, target_signature)

from specdec_plugin_eagle.build import default_feature_layers, new_draft_model
from specdec_plugin_eagle.checkpoints import save_draft
from specdec_plugin_eagle.features import FeatureSet, compute_features, features_key, frequent_tokens, token_frequencies
from specdec_plugin_eagle.train import Trainer, TrainConfig

FEATURES_FILE = "features.pt"
WEIGHTS_FOLDER = "weights"
REPORT_FILE = "report.json"


def run_training(out: str | Path, *, model_name: str | None = None, data_files: Sequence[str] = (),
                 prompts: str | None = None, distill_temperatures: Sequence[float] = (0.0,),
                 max_new_tokens: int = 256, style: str = "eagle1", feature_layers: Sequence[int] | None = None,
                 draft_vocab: int | None = None, max_length: int = 1024, config: TrainConfig = TrainConfig(),
                 checkpoint_every: int = 100, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Train an EAGLE draft model for a target; returns the report also written to `out/report.json`.

    The model lands in `out/weights`, usable as `drafter: {type: eagle, params: {weights: <out>/weights}}`.
    """
    out = Path(out)
    refuse_existing_run(out, resume)
    if not data_files and not prompts:
        raise InputError("give training data (--data FILE) and/or a prompt set to self-distil (--prompts FILE)")
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    model, tokenizer, name = load_frozen_target(model_name, times)

    files = [str(path) for path in data_files]
    if prompts:
        files += self_distil(model, tokenizer, read_chat_prompts(prompts), out, temperatures=distill_temperatures,
                             times=times, log=log, max_new_tokens=max_new_tokens, seed=config.seed,
                             progress=progress)

    sequences = read_corpus(files, tokenizer, max_length=max_length)
    layers = tuple(feature_layers) if feature_layers else default_feature_layers(model, style)
    signature = target_signature(model, name)

    def compute() -> FeatureSet:
        log(f"computing target features (hidden_states {list(layers)}) over "
            f"{sum(len(s.token_ids) for s in sequences)} tokens in {len(sequences)} sequences")
        return compute_features(model, sequences, layers, progress=progress)

    data = cached_features(FeatureSet, out / FEATURES_FILE, features_key(signature, sequences, layers), compute, times)

    vocab = int(model.get_output_embeddings().weight.shape[0])
    draft_ids = None
    if draft_vocab is not None and draft_vocab < vocab:
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else (list(eos) if isinstance(eos, (list, tuple)) else [eos])
        draft_ids = frequent_tokens(token_frequencies(sequences, vocab), draft_vocab, eos)
    draft = new_draft_model(model, style=style, feature_layers=layers, draft_ids=draft_ids, by_frequency=True,
                            seed=config.seed)
    trainer = Trainer(config, draft, data, out, model.device)
    accuracy = trainer.run(f"training an {style} draft model on {len(trainer.train_index)} sequences "
                           f"({len(trainer.eval_index)} held out), {trainer.total_steps} steps of about "
                           f"{config.batch_tokens} tokens, {config.levels} levels, draft vocabulary "
                           f"{draft.config.draft_vocab_size}, {trainer.dtype} autocast",
                           resume=resume, checkpoint_every=checkpoint_every, progress=progress, log=log, times=times)
    covered = float(data.learned.sum()) and float(
        torch.isin(data.tokens[data.learned], trainer.model.draft_ids.cpu()).float().mean())
    training = {
        "recipe": f"EAGLE ({style}, frozen target), specdec-plugin-eagle",
        "data": [Path(path).name for path in files],
        "sequences": len(sequences),
        "tokens": int(data.tokens.numel()),
        "split": {"train": len(trainer.train_index), "held_out": len(trainer.eval_index)},
        "draft_vocab_coverage": round(covered, 4),
        "steps": trainer.step,
        "settings": asdict(config),
        "autocast_dtype": str(trainer.dtype).removeprefix("torch."),
        "seconds": times,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    folder = save_draft(trainer.model, out / WEIGHTS_FOLDER, target=model, tokenizer=tokenizer, name=name,
                        accuracy=accuracy, training=training)
    report = {"weights": str(folder), "accuracy": accuracy, "training": training}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report
