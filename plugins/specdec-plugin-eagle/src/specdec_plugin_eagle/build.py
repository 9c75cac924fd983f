"""New draft models shaped after their target, and the target's features they read."""

from __future__ import annotations

from typing import Sequence

import torch

from specdec_plugin_eagle.model import EagleConfig, EagleDraftModel

FINAL_FEATURE = -1  # the target's `hidden_states[-1]`: the final normed state its LM head reads


def text_config(target):
    config = target.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def default_feature_layers(target, style: str) -> tuple[int, ...]:
    """`eagle1`: the final normed state. `eagle3`: a low, a middle and a high layer, as the EAGLE
    authors pick them (the inputs of decoder layers 2, L // 2 and L - 3, i.e. `hidden_states`
    indices 2, L // 2, L - 3 of an L-layer target), clamped for very shallow targets."""
    if style == "eagle1":
        return (FINAL_FEATURE,)
    layers = int(text_config(target).num_hidden_layers)
    return (min(2, layers), layers // 2, max(layers - 3, 0))


def rope_settings(config) -> dict:
    """The target's rotary embedding as `rope_theta` plus `rope_scaling` (None for plain RoPE):
    recent transformers keep both in one `rope_parameters` dict, older ones apart."""
    parameters = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = parameters.pop("rope_theta", None) or getattr(config, "rope_theta", None) or 10000.0
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    return {"rope_theta": float(theta), "rope_scaling": None if kind == "default" else {**parameters, "rope_type": kind}}


def new_draft_model(target, *, style: str = "eagle1", feature_layers: Sequence[int] | None = None,
                    draft_ids: torch.Tensor | None = None, by_frequency: bool = False, seed: int = 0) -> EagleDraftModel:
    """A freshly initialised draft model with the target's attention shapes and vocabulary.

    `eagle1` models start with `fc` passing the feature through (identity on the feature half,
    small weights on the embedding half), so the layer begins from the target's own feature;
    `eagle3` models start their norm and LM head from the target's final norm and LM head rows,
    so training begins from the target's own reading of a feature.
    """
    config = text_config(target)
    lm_head = target.get_output_embeddings().weight.detach()
    embedding = target.get_input_embeddings().weight.detach()
    vocab, hidden = (int(size) for size in lm_head.shape)
    heads = int(config.num_attention_heads)
    ids = torch.arange(vocab) if draft_ids is None else draft_ids.to(torch.long).cpu()
    draft_config = EagleConfig(
        style=style, hidden_size=hidden, intermediate_size=int(config.intermediate_size),
        num_attention_heads=heads, num_key_value_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or hidden // heads), vocab_size=vocab,
        target_hidden_size=hidden,
        feature_layers=tuple(feature_layers) if feature_layers is not None else default_feature_layers(target, style),
        draft_vocab_size=int(ids.numel()), rms_norm_eps=float(getattr(config, "rms_norm_eps", 1e-6)),
        **rope_settings(config),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 8192)),
        vocab_by_frequency=by_frequency and draft_ids is not None)
    torch.manual_seed(seed)
    model = EagleDraftModel(draft_config, embedding.float().cpu(), ids, lm_head.float().cpu() if style == "eagle1" else None)
    if style == "eagle1":
        with torch.no_grad():
            model.fc.weight[:, hidden:].copy_(torch.eye(hidden))
            model.fc.weight[:, :hidden].mul_(0.1)
            if model.fc.bias is not None:
                model.fc.bias.zero_()
    if style == "eagle3":
        with torch.no_grad():
            model.lm_head.weight.copy_(lm_head.float().cpu()[ids])
            final_norm = getattr(getattr(target, "model", None), "norm", None)
            if final_norm is not None and tuple(final_norm.weight.shape) == (hidden,):
                model.norm.weight.copy_(final_norm.weight.detach().float().cpu())
    return model.float()


def attach(model: EagleDraftModel, target, dtype: torch.dtype | None = None) -> EagleDraftModel:
    """Put the draft model on the target's device (in `dtype`, default the target's), frozen."""
    device = target.get_output_embeddings().weight.device
    return model.to(device=device, dtype=dtype or target.dtype).eval().requires_grad_(False)
