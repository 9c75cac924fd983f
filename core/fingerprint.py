"""What identifies a target model and its tokenizer, for drafters trained on one target.

Trained drafters (Medusa heads, EAGLE draft models, draft vocabularies) only work on the model
they were trained for. They record a *signature* of it (architecture, sizes, and probes of its LM
head and input embedding weights: values at fixed pseudo-random places plus their spread) and,
where token ids matter on their own, a fingerprint of the tokenizer's token-to-id map; loading
compares them with the model at hand and names what differs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

PROBE_SIZE = 256
# Probe values may differ by this fraction of the weights' spread: loose enough for the same
# weights in float16/bfloat16, far tighter than the gap to another model or quantization.
PROBE_TOLERANCE = 0.02


def target_signature(model, name: str | None = None) -> dict[str, Any]:
    """What identifies the target model: architecture, sizes and probes of its LM head and
    input embedding weights."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    lm_head = model.get_output_embeddings().weight
    embedding = model.get_input_embeddings().weight
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    return {
        "name": name or getattr(model.config, "_name_or_path", "") or "",
        "architecture": architectures[0],
        "model_type": getattr(config, "model_type", ""),
        "hidden_size": int(lm_head.shape[1]),
        "vocab_size": int(lm_head.shape[0]),
        "num_hidden_layers": int(getattr(config, "num_hidden_layers", 0)),
        "tied_embeddings": bool(lm_head.data_ptr() == embedding.data_ptr()),
        "lm_head_probe": weight_probe(lm_head),
        "embedding_probe": weight_probe(embedding),
    }


def weight_probe(weight: torch.Tensor) -> dict[str, Any]:
    rows, columns = weight.shape
    generator = torch.Generator().manual_seed(rows * 1_000_003 + columns)
    row_index = torch.randint(rows, (PROBE_SIZE,), generator=generator)
    column_index = torch.randint(columns, (PROBE_SIZE,), generator=generator)
    with torch.no_grad():
        values = weight.detach()[row_index.to(weight.device), column_index.to(weight.device)].float().cpu()
        spread = float(weight.detach()[row_index.to(weight.device)].float().std())
    return {"values": [round(value, 6) for value in values.tolist()], "spread": round(spread, 6)}


def same_probe(expected: dict, actual: dict) -> bool:
    left, right = torch.tensor(expected["values"]), torch.tensor(actual["values"])
    if left.shape != right.shape:
        return False
    scale = max(float(expected.get("spread", 0.0)), 1e-8)
    return bool(((left - right).abs() <= PROBE_TOLERANCE * scale + 1e-6).all())


def signature_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """How a recorded signature differs from a model's, in words (empty: the same model)."""
    problems = []
    for key, label in (("architecture", "architecture"), ("hidden_size", "hidden size"),
                       ("vocab_size", "vocabulary size"), ("num_hidden_layers", "layers")):
        if key in expected and expected[key] != actual[key]:
            problems.append(f"{label} {expected[key]} vs {actual[key]}")
    if not problems:
        for key, label in (("lm_head_probe", "LM head"), ("embedding_probe", "input embedding")):
            if key in expected and not same_probe(expected[key], actual[key]):
                problems.append(f"the {label} weights differ")
    return problems


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the token-to-id map: two tokenizers with equal fingerprints number tokens alike."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()
    return digest[:16]
