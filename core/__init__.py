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
    "mean_accepted_tokens": "specdec.stats",
    "tokens_per_second": "specdec.stats",
    "ConfigError": "specdec.errors",
    "DraftError": "specdec.errors",
    "GenerationError": "specdec.errors",
    "InputError": "specdec.errors",
    "ModelMismatchError": "specdec.errors",
    "PluginError": "specdec.errors",
    "SpecdecError": "specdec.errors",
    "hookimpl": "specdec.hookspecs",
    "Pipeline": "specdec.pipeline",
    # what plugins build on besides the protocols: one public surface, so that plugins never
    # import specdec's internal modules (`specdec.testing`, the harness, is public too)
    "breadth_first": "specdec.draft",
    "merge_sequences": "specdec.draft",
    "merge_trees": "specdec.draft",
    "subtree_parents": "specdec.draft",
    "tree_children": "specdec.draft",
    "tree_depths": "specdec.draft",
    "PathTree": "specdec.trees",
    "check_tree_paths": "specdec.trees",
    "tree_from_paths": "specdec.trees",
    "greedy_walk": "specdec.acceptance",
    "NoDrafter": "specdec.drafters.none",
    "FallbackDrafter": "specdec.drafters.fallback",
    "HFVerifier": "specdec.verifiers.hf",
    "BuildContext": "specdec.registry",
    "CostModel": "specdec.cost",
    "cost_model_for": "specdec.cost",
    "measure_cost_model": "specdec.cost",
    "select_nodes": "specdec.cost",
    "path_probabilities": "specdec.cost",
    "AcceptanceTracker": "specdec.cost",
    "SlotAcceptance": "specdec.cost",
    "synchronize": "specdec.cost",
    "LINEAR_KERNELS": "specdec.config",
    "configure_linear_kernel": "specdec.linear_kernels",
    "linear_kernels_for": "specdec.linear_kernels",
    "linear_forward": "specdec.linear_kernels",
    "linear_kernel_of": "specdec.linear_kernels",
    "follow_linear_kernel": "specdec.linear_kernels",
    "running_linear_kernels": "specdec.linear_kernels",
    "MinGain": "specdec.cost_params",
    "NodeCost": "specdec.cost_params",
    "min_gain_field": "specdec.cost_params",
    "node_cost_field": "specdec.cost_params",
    "time_verification": "specdec.cost",
    "DEFAULT_MODEL": "specdec.models",
    "checkpoint_source": "specdec.models",
    "answer_chats": "specdec.models",
    "chat_token_ids": "specdec.models",
    "eos_token_ids": "specdec.models",
    "file_sha256": "specdec.models",
    "load_model": "specdec.models",
    "DraftModelDrafter": "specdec.drafters.draft_model",
    "ValidatedPipeline": "specdec.config",
    "load_yaml": "specdec.config",
    "read_text_file": "specdec.config",
    "validate_pipeline": "specdec.config",
    "validate_component": "specdec.config",
    "default_plugins": "specdec.plugins",
    "load_plugins": "specdec.plugins",
    # `main(argv)` runs the `specdec` command in-process, as `pytest.main` runs pytest
    "main": "specdec.cli",
    "validated_pipeline": "specdec.cli",
    "with_tp_size": "specdec.cli",
    "TensorParallel": "specdec.distributed",
    "collective_timeout_seconds": "specdec.distributed",
    "exit_rank": "specdec.distributed",
    # torch-free: what torchrun told this process (the CLIs read it before loading anything)
    "is_follower_rank": "specdec.launch",
    "launched_rank": "specdec.launch",
    "launched_ranks": "specdec.launch",
    "json_lines": "specdec.jsonl",
    "parse_json_lines": "specdec.jsonl",
    "chat_messages": "specdec.jsonl",
    "read_chat_prompts": "specdec.jsonl",
    # trained drafters: their training text and the fingerprint of the target they were trained for
    "TokenSequence": "specdec.training_data",
    "distill": "specdec.training_data",
    "read_corpus": "specdec.training_data",
    "write_jsonl": "specdec.training_data",
    # ... and the scaffolding their recipes share: preparation, features cache, checkpointed loop
    "CheckpointedTrainer": "specdec.training",
    "SavedTensors": "specdec.training",
    "cached_features": "specdec.training",
    "features_cache_key": "specdec.training",
    "length_batches": "specdec.training",
    "load_frozen_target": "specdec.training",
    "refuse_existing_run": "specdec.training",
    "right_padded": "specdec.training",
    "save_atomically": "specdec.training",
    "self_distil": "specdec.training",
    "training_dtype": "specdec.training",
    "warmup_cosine": "specdec.training",
    "signature_differences": "specdec.fingerprint",
    "target_signature": "specdec.fingerprint",
    "tokenizer_fingerprint": "specdec.fingerprint",
    "read_json_lines": "specdec.jsonl",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'specdec' has no attribute {name!r}")
    # looked up in the defining module every time, not cached here: a test that monkeypatches
    # `specdec.plugins.default_plugins` must not leave its patch behind in `specdec`
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
