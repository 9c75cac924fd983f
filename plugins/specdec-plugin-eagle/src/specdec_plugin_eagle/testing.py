"""Tiny trained draft models for tests: EAGLE drafts that really predict a tiny model.

Random draft models would make every losslessness test pass through rejections alone; these are
trained with the plugin's own code (features, `Trainer`) on the tiny model's own samples, in a
few seconds, so that drafts are accepted often and accepted paths, trees and rollbacks get
exercised.
"""

from __future__ import annotations

import tempfile
from typing import Sequence

import torch

from specdec.testing import sample_sequences

from specdec_plugin_eagle.build import attach, new_draft_model
from specdec_plugin_eagle.features import compute_features
from specdec_plugin_eagle.model import EagleDraftModel
from specdec_plugin_eagle.train import Trainer, TrainConfig


def train_tiny_draft(target, *, style: str = "eagle1", feature_layers: Sequence[int] | None = None,
                     draft_ids: torch.Tensor | None = None, by_frequency: bool = False, epochs: float = 40.0,
                     levels: int = 2, seed: int = 0, **sample_options) -> EagleDraftModel:
    """A draft model for `target` trained on its own samples (see `specdec.testing.sample_sequences`), attached
    to the target (its device and dtype, frozen)."""
    model = new_draft_model(target, style=style, feature_layers=feature_layers, draft_ids=draft_ids,
                            by_frequency=by_frequency, seed=seed)
    sequences = sample_sequences(target, seed=seed, **sample_options)
    data = compute_features(target, sequences, model.config.feature_layers, progress=False)
    config = TrainConfig(levels=levels, epochs=epochs, batch_tokens=512, learning_rate=3e-3, eval_fraction=0.1,
                         eval_depth=3, seed=seed, dtype="float32", noise=0.0)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(config, model, data, scratch)
        trainer.train(checkpoint_every=10**9, progress=False)
    model.accuracy = trainer.evaluate()
    return attach(model, target)
