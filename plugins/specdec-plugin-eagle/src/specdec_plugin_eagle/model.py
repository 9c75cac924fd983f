"""The EAGLE draft model: one decoder layer that predicts the target's next feature.

A *feature* is what the target computes for a position before its LM head. The draft reads the
feature at position i together with the token at i + 1 and predicts the feature at i + 1, whose
projection onto the vocabulary drafts the token at i + 2; fed back with that token, it drafts one
position further, and so on. Two architectures share this module:

- `eagle1` (EAGLE-1/2): the feature is the target's final normed hidden state; the input is
  `fc([embedding ; feature])` (a linear layer over the concatenation, embedding first), the
  decoder layer has no input norm, and its output, the predicted feature, is projected by the
  target's frozen LM head (restricted to the draft vocabulary when it is truncated);
- `eagle3` (EAGLE-3): the target's feature is the concatenation of several layers' hidden states
  (low, middle, high), reduced by `fc` to the hidden size; the layer's attention reads
  `[input_norm(embedding) ; hidden_norm(feature)]` (twice the hidden size) and its output goes
  through a final norm and the draft's own LM head over a draft vocabulary (`draft_ids`, the
  `d2t` map of published checkpoints). Drafting deeper feeds the layer's output back instead of
  a target feature (no `fc` then).

Keys, values and positions follow the target's Llama layout (grouped-query attention, rotary
embeddings); `DraftCache` holds the one layer's entries, addressed by position like the target's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

STYLES = ("eagle1", "eagle3")


@dataclass(frozen=True)
class EagleConfig:
    """Shapes and options of a draft model (what `config.json` of a specdec EAGLE folder records)."""

    style: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # the target's
    target_hidden_size: int
    feature_layers: tuple[int, ...]  # indices into the target's `hidden_states` (-1: final normed)
    draft_vocab_size: int  # rows of the draft's vocabulary projection
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 8192
    fc_bias: bool = True  # eagle1: the EAGLE authors' default
    attention_bias: bool = False
    norm_before_residual: bool = False  # eagle3: the residual is hidden_norm(feature) (a speculators option)
    vocab_by_frequency: bool = False  # draft rows run from the most frequent token down (FR-Spec)

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.style == "eagle1" and (len(self.feature_layers) != 1 or self.target_hidden_size != self.hidden_size):
            raise ValueError("an eagle1 draft model reads one target layer of its own hidden size")
        if not 0 < self.draft_vocab_size <= self.vocab_size:
            raise ValueError(f"draft_vocab_size must lie in [1, {self.vocab_size}], got {self.draft_vocab_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_layers"] = list(self.feature_layers)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EagleConfig":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["feature_layers"] = tuple(known.get("feature_layers", ()))
        return cls(**known)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: EagleConfig):
        super().__init__()
        inputs = config.hidden_size * (2 if config.style == "eagle3" else 1)
        heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(inputs, heads * dim, bias=bias)
        self.k_proj = nn.Linear(inputs, kv_heads * dim, bias=bias)
        self.v_proj = nn.Linear(inputs, kv_heads * dim, bias=bias)
        self.o_proj = nn.Linear(heads * dim, config.hidden_size, bias=False)


class MLP(nn.Module):
    def __init__(self, config: EagleConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """The one layer; `eagle3` adds the norms of its two inputs."""

    def __init__(self, config: EagleConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.style == "eagle3":
            self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


@dataclass
class QKV:
    """One forward's attention inputs: `[B, heads, N, D]` each, plus the residual `[B, N, H]`."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    residual: torch.Tensor


#: attention(q, k, v) -> [B, heads, N, D]: how the caller lets the queries see keys (a cache, a
#: causal mask, the unrolled levels of training)
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class EagleDraftModel(nn.Module):
    """The draft model over a target whose input embedding (and, for `eagle1`, LM head) it shares.

    :param config: shapes and options.
    :param embedding: `[V, H]` the target's input embedding (frozen, not saved).
    :param draft_ids: `[Vd]` target token id of each draft vocabulary row (most useful first).
    :param lm_head: `eagle1` only: `[V, H]` the target's LM head (frozen, not saved); its
        `draft_ids` rows project the predicted feature.
    """

    def __init__(self, config: EagleConfig, embedding: torch.Tensor, draft_ids: torch.Tensor,
                 lm_head: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        if tuple(embedding.shape) != (config.vocab_size, hidden):
            raise ValueError(f"the embedding has shape {tuple(embedding.shape)}, the draft model expects "
                             f"[{config.vocab_size}, {hidden}]")
        if tuple(draft_ids.shape) != (config.draft_vocab_size,):
            raise ValueError(f"draft_ids must have shape [{config.draft_vocab_size}]")
        features = config.target_hidden_size * len(config.feature_layers)
        if config.style == "eagle1":
            self.fc = nn.Linear(2 * hidden, hidden, bias=config.fc_bias)
            if lm_head is None or tuple(lm_head.shape) != (config.vocab_size, hidden):
                raise ValueError(f"an eagle1 draft model needs the target's LM head [{config.vocab_size}, {hidden}]")
            self.register_buffer("head_weight", lm_head.detach()[draft_ids.to(lm_head.device)], persistent=False)
        else:
            self.fc = nn.Linear(features, hidden, bias=False)
            self.norm = RMSNorm(hidden, config.rms_norm_eps)
            self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
        self.layer = DecoderLayer(config)
        self.register_buffer("embedding", embedding.detach(), persistent=False)
        self.register_buffer("draft_ids", draft_ids.to(torch.long).clone())
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rope = LlamaConfig(hidden_size=hidden, num_attention_heads=config.num_attention_heads,
                           head_dim=config.head_dim, rope_theta=config.rope_theta, rope_scaling=config.rope_scaling,
                           max_position_embeddings=config.max_position_embeddings)
        self.rotary = LlamaRotaryEmbedding(rope)

    def truncate_vocabulary(self, size: int) -> "EagleDraftModel":
        """Keep the first `size` rows of the draft vocabulary: its `size` most frequent tokens
        when the rows are ordered by frequency (FR-Spec; the projection is most of a drafting
        step's arithmetic). Verification still uses the full vocabulary."""
        from dataclasses import replace

        if not self.config.vocab_by_frequency:
            raise ValueError("this draft model's vocabulary is not ordered by frequency, so its first rows are not "
                             "its most useful ones; truncate it when training (`specdec eagle train --draft-vocab N`)")
        if not 0 < size <= self.config.draft_vocab_size:
            raise ValueError(f"draft_vocab must lie in [1, {self.config.draft_vocab_size}] for this draft model")
        self.config = replace(self.config, draft_vocab_size=size)
        self.draft_ids = self.draft_ids[:size].clone()
        if self.config.style == "eagle1":
            self.head_weight = self.head_weight[:size].clone()
        else:
            head = nn.Linear(self.config.hidden_size, size, bias=False).to(self.lm_head.weight)
            head.weight.data.copy_(self.lm_head.weight.data[:size])
            self.lm_head = head
        return self

    # -- the pieces of one forward ------------------------------------------------------------------

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Target features `[..., len(feature_layers) * Ht]` -> the layer's hidden input `[..., H]`."""
        return features if self.config.style == "eagle1" else self.fc(features)

    def qkv(self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> QKV:
        """`tokens` `[B, N]`, `hidden` `[B, N, H]` (a projected target feature or a draft output),
        `positions` `[B, N]`."""
        config, layer = self.config, self.layer
        embedded = self.embedding[tokens].to(hidden.dtype)
        if config.style == "eagle1":
            x = self.fc(torch.cat((embedded, hidden), dim=-1))
            residual, inputs = x, x
        else:
            normed = layer.hidden_norm(hidden)
            residual = normed if config.norm_before_residual else hidden
            inputs = torch.cat((layer.input_layernorm(embedded), normed), dim=-1)
        batch, count, _ = inputs.shape
        attention, dim = layer.self_attn, config.head_dim
        q = attention.q_proj(inputs).view(batch, count, -1, dim).transpose(1, 2)
        k = attention.k_proj(inputs).view(batch, count, -1, dim).transpose(1, 2)
        v = attention.v_proj(inputs).view(batch, count, -1, dim).transpose(1, 2)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = self.rotary(v, positions)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return QKV(q, k, v, residual)

    def finish(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Attention output `[B, heads, N, D]` -> the layer's output `[B, N, H]` (the next feature)."""
        batch, _, count, _ = attended.shape
        hidden = residual + self.layer.self_attn.o_proj(attended.transpose(1, 2).reshape(batch, count, -1))
        return hidden + self.layer.mlp(self.layer.post_attention_layernorm(hidden))

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                attention: AttentionFn) -> torch.Tensor:
        parts = self.qkv(tokens, hidden, positions)
        return self.finish(attention(parts.q, parts.k, parts.v), parts.residual)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """Layer output `[..., H]` -> logits over the draft vocabulary `[..., Vd]`."""
        if self.config.style == "eagle1":
            return output @ self.head_weight.to(output.dtype).T
        return self.lm_head(self.norm(output))

    def causal(self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Every position attends to the earlier ones of its own row (training, evaluation)."""
        return self(tokens, hidden, positions,
                    lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))


@dataclass
class DraftCache:
    """The draft layer's keys and values by position: `store[0|1, kv_heads, position, D]`.

    `length` entries belong to committed tokens; entries past it are scratch space for the tree
    being drafted (overwritten by the next step, never read before that).
    """

    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    store: torch.Tensor | None = field(default=None, repr=False)
    length: int = 0

    def ensure(self, capacity: int) -> None:
        if self.store is not None and self.store.shape[2] >= capacity:
            return
        size = max(capacity, 2 * (0 if self.store is None else self.store.shape[2]), 64)
        grown = torch.zeros(2, self.kv_heads, size, self.head_dim, dtype=self.dtype, device=self.device)
        if self.store is not None and self.length:
            grown[:, :, : self.length] = self.store[:, :, : self.length]
        self.store = grown

    def attention(self, slots: torch.Tensor, visible: torch.Tensor) -> AttentionFn:
        """Write the new keys and values at `slots` `[N]` (entry indices), then let query i see
        the entries where `visible[i]` `[N, span]` is True."""

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            span = visible.shape[1]
            self.ensure(int(slots.max()) + 1)
            self.store[0][:, slots] = k[0].to(self.dtype)
            self.store[1][:, slots] = v[0].to(self.dtype)
            keys = self.store[0, :, :span].to(q.dtype)[None]
            values = self.store[1, :, :span].to(q.dtype)[None]
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[None, None], enable_gqa=True)

        return attend
