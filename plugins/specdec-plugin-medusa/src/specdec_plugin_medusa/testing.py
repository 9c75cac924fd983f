"""Tiny trained heads for tests: Medusa heads that really predict a tiny model's continuations.

Random heads would make every losslessness test pass trivially through rejections; these are
trained with the plugin's own pipeline (features, `Trainer`) on the tiny model's own samples,
in a second or two, so that drafts are accepted often and the accepted paths get exercised.
"""

from __future__ import annotations

from specdec import target_signature
from specdec.testing import sample_sequences

from specdec_plugin_medusa.drafter import MedusaDrafter
from specdec_plugin_medusa.features import compute_features
from specdec_plugin_medusa.heads import MedusaHeads
from specdec_plugin_medusa.train import Trainer, TrainConfig
from specdec_plugin_medusa.trees import TreeLayout


def train_tiny_heads(model, *, num_heads: int = 3, num_layers: int = 1, own_lm_head: bool = False,
                     epochs: float = 30.0, seed: int = 0, folder=None, **sample_options) -> MedusaHeads:
    """Heads for `model` trained on its own samples (see `specdec.testing.sample_sequences`)."""
    import tempfile

    features = compute_features(model, sample_sequences(model, seed=seed, **sample_options),
                                max_future=num_heads + 1, progress=False)
    config = TrainConfig(num_heads=num_heads, num_layers=num_layers, own_lm_head=own_lm_head, epochs=epochs,
                         batch_size=128, learning_rate=3e-3, eval_fraction=0.1, top_k=4, seed=seed,
                         dtype="float32")
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(config, features, model.get_output_embeddings().weight, target_signature(model),
                          folder or scratch)
        trainer.train(checkpoint_every=10**9, progress=False)
    heads = trainer.heads
    heads.config.accuracy = trainer.evaluate()
    return heads.requires_grad_(False).eval()


def medusa_drafter_factory(heads: MedusaHeads, paths):
    """`make_drafter(target)` for `specdec.testing`: a `MedusaDrafter` with these heads and tree."""
    layout = TreeLayout.from_paths(paths)
    return lambda target: MedusaDrafter(heads, layout)
