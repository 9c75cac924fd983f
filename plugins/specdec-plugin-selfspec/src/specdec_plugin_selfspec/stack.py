"""A lean eager forward over a chosen subset of a Llama-family model's decoder layers.

Both self-drafting drafters run the target's own architecture without going through the
target's full forward: `layer_skip` runs a subset of the target's layers with the target's
weights, `low_precision` all (or some) layers of a cheaper copy. Neither may use the verifier's
forward: on CUDA that replays graphs of the *full* model, and its cache bookkeeping commits
entries. So this module reimplements the decoder layer (RMSNorm, rotary attention with
grouped-query heads, gated MLP) in a few tensor operations per layer, over a KV store addressed
by position: the caller says where the new entries go and what each query may attend, and
nothing else in the store changes. A test checks the whole stack against the Hugging Face
forward.

Supported: the Llama family as transformers implements it (llama, mistral, qwen2, qwen3: SiLU
gated MLP, RMSNorm, rotary positions, optional q/k/v biases, qwen3's per-head q/k norms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from specdec import ModelMismatchError, linear_forward

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")

Projection = Callable[[torch.Tensor], torch.Tensor]  # [..., in] -> [..., out]


def text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_architecture(model) -> None:
    """Refuse models whose layers this module's forward would compute wrongly."""
    config = text_config(model)
    model_type = getattr(config, "model_type", type(model).__name__)
    if getattr(model, "specdec_tp", None) is not None:
        raise ModelMismatchError(
            "self-drafting runs the target's own layers on its own KV cache, which a tensor-parallel target "
            "splits across ranks; use a drafter of its own (prompt_lookup, token_recycling, draft_model, "
            "medusa) or target.tp_size 1")
    inner = getattr(model, "model", None)
    if model_type not in SUPPORTED_MODEL_TYPES or inner is None or not hasattr(inner, "layers"):
        raise ModelMismatchError(
            f"self-drafting runs the target's decoder layers itself and supports the Llama family "
            f"({', '.join(SUPPORTED_MODEL_TYPES)}); this model is '{model_type}'. Use `draft_model` or "
            f"`prompt_lookup` with it instead")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ModelMismatchError(f"self-drafting supports SiLU-gated MLPs; this {model_type} model uses "
                                 f"'{config.hidden_act}'")


@dataclass
class LayerWeights:
    """What one decoder layer computes with. `qkv` and `gate_up` are fused projections (one matrix
    product instead of three or two) when the weights are a converted copy; the target's own
    weights are used unfused, so nothing is copied."""

    index: int  # the layer's index in the model (its KV store row)
    input_norm: torch.Tensor  # [H]
    qkv: Projection | tuple[Projection, Projection, Projection]
    o: Projection
    post_norm: torch.Tensor  # [H]
    gate_up: Projection | tuple[Projection, Projection]
    down: Projection
    q_norm: torch.Tensor | None = None  # [D] (qwen3)
    k_norm: torch.Tensor | None = None


def linear(model, module: torch.nn.Linear) -> Projection:
    """The target's own projection, unfused and uncopied, on the kernel the target's verification
    runs it with (`target.linear_kernel`: on some CPUs oneDNN's is twice as fast as torch's)."""
    return linear_forward(model, module)


def target_layers(model) -> list[LayerWeights]:
    """Every decoder layer of `model` with the model's own weights (shared, not copied)."""
    check_architecture(model)
    layers = []
    for index, layer in enumerate(model.model.layers):
        attention, mlp = layer.self_attn, layer.mlp
        layers.append(LayerWeights(
            index, layer.input_layernorm.weight,
            (linear(model, attention.q_proj), linear(model, attention.k_proj), linear(model, attention.v_proj)),
            linear(model, attention.o_proj), layer.post_attention_layernorm.weight,
            (linear(model, mlp.gate_proj), linear(model, mlp.up_proj)), linear(model, mlp.down_proj),
            getattr(getattr(attention, "q_norm", None), "weight", None),
            getattr(getattr(attention, "k_norm", None), "weight", None)))
    return layers


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """`[..., D] -> [..., D]` with the two halves of the last dimension swapped: with the sign of
    the first half folded into the sine, the `rotate_half` of rotary embeddings in one copy
    (instead of two slices, a negation and a concatenation)."""
    return x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)


class DecoderStack:
    """Runs some decoder layers of a Llama-family model over a positional KV store.

    :param model: the model whose embeddings, rotary embedding and architecture are used.
    :param layers: every layer's weights, by model layer index (`target_layers` or a converted copy).
    :param head: the vocabulary projection `[.., H] -> [.., V_draft]` (full or truncated).
    :param norm: the final RMSNorm weight.
    :param dtype: the dtype the stack computes in (the copy's, or the target's).
    """

    def __init__(self, model, layers: Sequence[LayerWeights], head: Projection, norm: torch.Tensor,
                 dtype: torch.dtype):
        check_architecture(model)
        config = text_config(model)
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.layers = list(layers)
        self.head = head
        self.norm = norm
        self.dtype = dtype
        self.eps = float(config.rms_norm_eps)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.groups = self.num_heads // self.num_kv_heads
        self.scale = float(getattr(model.model.layers[0].self_attn, "scaling", self.head_dim ** -0.5))
        self.num_layers = len(model.model.layers)
        self.device = self.embed.weight.device
        half = self.head_dim // 2
        self._half_signs = torch.tensor([-1.0] * half + [1.0] * half, device=self.device)

    def _project_qkv(self, layer: LayerWeights, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys `[n, heads + H_kv, D]` (per-head normed where the model has q/k norms),
        values `[n, H_kv * D]`, of the normed hidden states `[n, H]`. A fused projection's output
        is only viewed, not copied (its query and key columns are adjacent)."""
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        if isinstance(layer.qkv, tuple):
            query, key, value = (projection(normed) for projection in layer.qkv)
            qk = torch.cat((query, key), dim=-1)
        else:
            fused = layer.qkv(normed)
            qk, value = fused[:, : (heads + kv_heads) * dim], fused[:, (heads + kv_heads) * dim:]
        qk = qk.unflatten(-1, (heads + kv_heads, dim))
        if layer.q_norm is not None:
            qk = torch.cat((F.rms_norm(qk[:, :heads], (dim,), layer.q_norm, self.eps),
                            F.rms_norm(qk[:, heads:], (dim,), layer.k_norm, self.eps)), dim=1)
        return qk, value

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, store: torch.Tensor, write_at: int,
                span: int, allowed: torch.Tensor | None = None, run: Sequence[int] | None = None,
                logits_rows: int = 1) -> torch.Tensor:
        """Run the layers `run` (model indices, default all) on n new tokens.

        :param input_ids: `[n]` tokens; `positions`: `[n]` their positions (rotary).
        :param store: `[L, 2, H_kv, capacity, D]` keys and values by model layer; the new entries
            of layer l go to `store[l, :, :, write_at: write_at + n]`, nothing else is written.
        :param span: the queries attend to `store[..., :span]` (the new entries included).
        :param allowed: `[n, span]` bool, which entries each query may attend; None = all of
            the span (a single query at the end of its sequence).
        :returns: logits `[logits_rows, V_draft]` float32 of the last rows.
        """
        count = input_ids.shape[0]
        heads, kv_heads, dim, groups = self.num_heads, self.num_kv_heads, self.head_dim, self.groups
        hidden = self.embed(input_ids.to(self.device)).to(self.dtype)[None]  # [1, n, H]
        cos, sin = self.rotary(hidden, positions.to(self.device)[None])  # [1, n, D]
        # [n, 1, D]: broadcast over the heads of `qk` below; the sign of rotate_half in the sine
        cos, sin = cos[0, :, None].to(self.dtype), (sin[0, :, None] * self._half_signs).to(self.dtype)
        mask = None
        if allowed is not None:  # grouped query heads are folded into the query rows, group-major
            mask = allowed.to(self.device).repeat(groups, 1)  # [G * n, span]
        end = write_at + count
        width = hidden.shape[-1]
        chosen = self.layers if run is None else [self.layers[index] for index in run]
        for layer in chosen:
            normed = F.rms_norm(hidden, (width,), layer.input_norm, self.eps)
            qk, value = self._project_qkv(layer, normed[0])  # [n, heads + H_kv, D], [n, H_kv * D]
            # rotary positions on queries and keys at once
            qk = qk * cos + _swap_halves(qk) * sin
            keys, values = store[layer.index, 0], store[layer.index, 1]  # [H_kv, capacity, D]
            keys[:, write_at:end] = qk[:, heads:].transpose(0, 1)
            values[:, write_at:end] = value.view(count, kv_heads, dim).transpose(0, 1)
            # [1, H_kv, G * n, D]: head h = kv * G + g, rows group-major (a view for one token)
            folded = qk[:, :heads].reshape(count, kv_heads, groups, dim).permute(1, 2, 0, 3).reshape(
                1, kv_heads, groups * count, dim)
            # 4D inputs: the CPU's flash kernel (3D ones take the slower math path)
            attended = F.scaled_dot_product_attention(folded, keys[None, :, :span], values[None, :, :span],
                                                      attn_mask=mask, scale=self.scale)  # [1, H_kv, G * n, D]
            attended = attended.view(kv_heads, groups, count, dim).permute(2, 0, 1, 3).reshape(1, count, heads * dim)
            hidden = hidden + layer.o(attended)
            normed = F.rms_norm(hidden, (width,), layer.post_norm, self.eps)
            if isinstance(layer.gate_up, tuple):
                gate, up = (projection(normed) for projection in layer.gate_up)
            else:
                gate, up = layer.gate_up(normed).chunk(2, -1)
            hidden = hidden + layer.down(F.silu(gate) * up)
        last = F.rms_norm(hidden[0, count - logits_rows:], (width,), self.norm, self.eps)
        return self.head(last).float()
