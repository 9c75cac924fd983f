"""Grouped-query SDPA: the same numbers as transformers' SDPA, without repeating the cache."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specdec.attention import GROUPED_QUERY_SDPA, grouped_query_sdpa, use_grouped_query_sdpa
from specdec.model_runner import CausalLMRunner
from specdec.testing import tiny_llama


class _Attention(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _tree_mask(count: int, past: int) -> torch.Tensor:
    """Additive [1, 1, count, past + count] mask: two branches from node 0 after `past` cached entries.

    Node i > 2 continues node i - 2, so odd and even nodes form two sibling chains.
    """
    parents = [-1] + [0 if node <= 2 else node - 2 for node in range(1, count)]
    allowed = torch.eye(count, dtype=torch.bool)
    for node, parent in enumerate(parents):
        while parent >= 0:
            allowed[node, parent] = True
            parent = parents[parent]
    mask = torch.zeros(count, past + count)
    mask[:, past:].masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("count", [1, 2, 7])
def test_grouped_query_sdpa_equals_transformers_sdpa_bitwise(groups, count):
    generator = torch.Generator().manual_seed(count)
    kv_heads, past, dim = 2, 13, 16
    query = torch.randn(1, kv_heads * groups, count, dim, generator=generator)
    key, value = (torch.randn(1, kv_heads, past + count, dim, generator=generator) for _ in range(2))
    module = _Attention(groups)
    for mask in (_tree_mask(count, past), None):
        expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
        actual, _ = grouped_query_sdpa(module, query, key, value, mask, scaling=0.25)
        assert actual.shape == expected.shape == (1, count, kv_heads * groups, dim)
        assert torch.equal(actual, expected)


def test_runner_switches_grouped_query_models_and_keeps_their_logits():
    reference, switched = tiny_llama(seed=3, num_heads=4, num_kv_heads=2), tiny_llama(seed=3, num_heads=4, num_kv_heads=2)
    CausalLMRunner(switched)
    assert switched.config._attn_implementation == GROUPED_QUERY_SDPA
    assert reference.config._attn_implementation == "sdpa"
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    positions = torch.tensor([[0, 1, 1, 2, 2, 3]])  # the depths of `_tree_mask`'s nodes
    mask = _tree_mask(6, 0)
    with torch.inference_mode():
        expected = reference(input_ids=ids, position_ids=positions, attention_mask=mask).logits
        actual = switched(input_ids=ids, position_ids=positions, attention_mask=mask).logits
        assert torch.equal(actual, expected)
        assert torch.equal(switched(input_ids=ids).logits, reference(input_ids=ids).logits)  # causal prefill


def test_models_without_grouped_queries_or_sdpa_are_left_alone():
    plain = tiny_llama(num_heads=4, num_kv_heads=4)
    assert not use_grouped_query_sdpa(plain) and plain.config._attn_implementation == "sdpa"
    eager = tiny_llama(num_heads=4, num_kv_heads=2)
    eager.set_attn_implementation("eager")
    assert not use_grouped_query_sdpa(eager) and eager.config._attn_implementation == "eager"
