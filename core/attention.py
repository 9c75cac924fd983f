"""SDPA for grouped-query attention under a custom mask, without copying the cache.

Verification feeds N tokens with a 4D mask (a chain or a tree). For models with grouped-query
attention (fewer key/value heads than query heads, as in Llama 3, Qwen 2, SmolLM2), transformers'
SDPA path then repeats every key and value head to the number of query heads (`repeat_kv`): a
copy of the whole cache in every layer, every step, which grows with the context and is a
noticeable share of a tree verification on a CPU (measured: docs/benchmarks.md, section
"Retrieval: what limits the speedup").

`grouped_query_sdpa` folds the query heads of each group into the query dimension instead
(`[B, H, N, D] -> [B, H_kv, G * N, D]`, the mask repeated G times along the queries), which is
the trick transformers itself applies to a single query token. It reads each cached key once
and uses the same SDPA kernel, on a differently shaped problem: the output is the same up to
float rounding. Whether it is bitwise the same depends on the kernel (a matrix product may block,
and so round, a taller query differently): it is on the AVX-512 CPUs we test on, and differs in
the last bit on an AMD EPYC with AVX2. Like any batched forward, that can flip a greedy near-tie
(docs/testing.md, "fp32 only"). Every other case (no mask, one query, per-head masks,
soft-capping, position biases) goes to transformers' own SDPA function, bitwise unchanged.
"""

from __future__ import annotations

import torch

GROUPED_QUERY_SDPA = "specdec_sdpa"


def grouped_query_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: float | None = None, **kwargs):
    """Attention function with transformers' `AttentionInterface` signature.

    query: [B, H, N, D]; key, value: [B, H_kv, S, D]; attention_mask: [B or 1, 1, N, S] or None.
    :returns: the attention output `[B, N, H, D]` and no attention weights.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, count, _ = query.shape
    if (groups == 1 or attention_mask is None or count == 1 or attention_mask.dim() != 4
            or attention_mask.shape[1] != 1 or kwargs.get("softcap") is not None
            or kwargs.get("position_bias") is not None):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    packed_query = query.reshape(batch, heads // groups, groups * count, query.shape[-1])
    # rows of a packed group are (head 0: tokens 0..N-1, head 1: tokens 0..N-1, ...)
    mask = attention_mask.expand(batch, 1, count, attention_mask.shape[-1]).repeat(1, 1, groups, 1)
    output = torch.nn.functional.scaled_dot_product_attention(
        packed_query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    output = output.reshape(batch, heads, count, value.shape[-1])
    return output.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_QUERY_SDPA, grouped_query_sdpa)
    AttentionMaskInterface.register(GROUPED_QUERY_SDPA, sdpa_mask)  # same masks as "sdpa"


def use_grouped_query_sdpa(model) -> bool:
    """Switch a model that uses "sdpa" and grouped-query attention to `grouped_query_sdpa`.

    The output is that of "sdpa" up to float rounding (bitwise where the kernel rounds the folded
    shape alike; tested to a tolerance and by greedy identity); only the masked multi-token path
    gets faster.
    Models with other attention implementations, or without grouped queries, are left alone.
    :returns: whether the model was switched.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if not heads or kv_heads == heads or not hasattr(model, "set_attn_implementation"):
        return False
    _register()
    model.set_attn_implementation(GROUPED_QUERY_SDPA)
    return getattr(config, "_attn_implementation", None) == GROUPED_QUERY_SDPA
