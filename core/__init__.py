"""specdec: composable, lossless speculative decoding for Hugging Face causal language models.

The core defines the protocols (`Drafter`, `Verifier`, `AcceptancePolicy`), the data contract
(`Draft`), sampling (`SamplingParams`, `warp_logits`) and the step engine
(`SpeculativeDecoder`). Techniques are components registered by plugins; `Pipeline` builds a
ready-to-use decoder from YAML.

Names are imported lazily, so that `specdec plugins` and `specdec validate` start without
loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Acceptance": "specdec.protocols",
    "AcceptancePolicy": "specdec.protocols",
    "BaseDrafter": "specdec.protocols",
    "DraftContext": "specdec.protocols",
    "Drafter": "specdec.protocols",
    "StepOutcome": "specdec.protocols",
    "Verifier": "specdec.protocols",
    "VerifyOutput": "specdec.protocols",
    "AuxTokens": "specdec.draft",
    "Draft": "specdec.draft",
    "Generation": "specdec.engine",
    "GenerationResult": "specdec.engine",
    "SpeculativeDecoder": "specdec.engine",
    "StepScheduler": "specdec.scheduler",
    "SequenceHandle": "specdec.scheduler",
    "DraftBatch": "specdec.batch",
    "DraftBudget": "specdec.budget",
    "GreedyAcceptance": "specdec.acceptance",
    "RejectionSampling": "specdec.acceptance",
    "RandomSource": "specdec.sampling",
    "TorchRandom": "specdec.sampling",
    "warp_logits": "specdec.sampling",
    "SamplingParams": "specdec.params",
    "GenerationStats": "specdec.stats",
    "ConfigError": "specdec.errors",
    "DraftError": "specdec.errors",
    "GenerationError": "specdec.errors",
    "InputError": "specdec.errors",
    "ModelMismatchError": "specdec.errors",
    "PluginError": "specdec.errors",
    "SpecdecError": "specdec.errors",
    "hookimpl": "specdec.hookspecs",
    "Pipeline": "specdec.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'specdec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
