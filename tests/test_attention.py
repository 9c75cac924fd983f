"""Grouped-query SDPA: the same numbers as transformers' SDPA, without repeating the cache.

Folding the query heads of a group into the query dimension runs the same SDPA kernel on a
differently shaped problem. Nothing in PyTorch promises that a matrix product rounds the same
way for every shape: on one CPU (AVX-512 here) the results are bitwise equal, on another (an AMD
EPYC with AVX2) the last bit differs. So bitwise equality is asserted only where
`grouped_query_sdpa` hands the call to transformers' own function; the folded path is compared
with a tolerance a few float32 ulps wide, which `test_the_tolerance_catches_a_wrong_mask_or_fold`
shows still fails on a wrong mask or a wrong group fold; and the property that matters, greedy
generations token for token, is checked on whole generations.
"""

import copy

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from specdec.attention import GROUPED_QUERY_SDPA, grouped_query_sdpa, use_grouped_query_sdpa
from specdec.model_runner import CausalLMRunner
from specdec.testing import ModelTreeDrafter, check_greedy_identity, perturbed_copy, tiny_llama

KV_HEADS, PAST, DIM, SCALE = 2, 13, 16, 0.25


class _Attention(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _parents(count: int) -> list[int]:
    """Two branches from node 0: node i > 2 continues node i - 2 (odd and even nodes form chains)."""
    return [-1] + [0 if node <= 2 else node - 2 for node in range(1, count)]


def _tree_mask(count: int, past: int, parents: list[int] | None = None) -> torch.Tensor:
    """Additive [1, 1, count, past + count] mask: each node sees the `past` cached entries, itself
    and its ancestors."""
    parents = _parents(count) if parents is None else parents
    allowed = torch.eye(count, dtype=torch.bool)
    for node, parent in enumerate(parents):
        while parent >= 0:
            allowed[node, parent] = True
            parent = parents[parent]
    mask = torch.zeros(count, past + count)
    mask[:, past:].masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def _inputs(groups: int, count: int):
    generator = torch.Generator().manual_seed(count)
    query = torch.randn(1, KV_HEADS * groups, count, DIM, generator=generator)  # [B, H, N, D]
    key, value = (torch.randn(1, KV_HEADS, PAST + count, DIM, generator=generator) for _ in range(2))
    return query, key, value


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to float32 rounding of a differently blocked matrix product (outputs are O(1))."""
    return torch.allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups, count, masked", [(1, 7, True), (3, 1, True), (3, 7, False)])
def test_cases_that_are_not_folded_are_transformers_sdpa_bitwise(groups, count, masked):
    """No groups, one query or no mask: the call goes to transformers' function itself."""
    query, key, value = _inputs(groups, count)
    module, mask = _Attention(groups), _tree_mask(count, PAST) if masked else None
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=SCALE)
    actual, _ = grouped_query_sdpa(module, query, key, value, mask, scaling=SCALE)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("count", [2, 7])
def test_grouped_query_sdpa_equals_transformers_sdpa(groups, count):
    query, key, value = _inputs(groups, count)
    module, mask = _Attention(groups), _tree_mask(count, PAST)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=SCALE)
    actual, _ = grouped_query_sdpa(module, query, key, value, mask, scaling=SCALE)
    assert actual.shape == expected.shape == (1, count, KV_HEADS * groups, DIM)
    assert _close(actual, expected), float((actual - expected).abs().max())


def test_the_tolerance_catches_a_wrong_mask_or_fold():
    """The mistakes the folded path could make, fed through the real function, fail `_close`."""
    groups, count = 3, 7
    query, key, value = _inputs(groups, count)
    module, mask = _Attention(groups), _tree_mask(count, PAST)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=SCALE)
    chain_mask = _tree_mask(count, PAST, parents=list(range(-1, count - 1)))  # causal, not the tree
    lost_ancestor = _tree_mask(count, PAST, parents=[-1, 0, 0, 1, -1, 3, 4])  # node 4 forgets node 2
    # query heads assigned to the wrong key/value head: head h of group k read as head k of group h
    wrong_fold = query.reshape(1, KV_HEADS, groups, count, DIM).transpose(1, 2).reshape(query.shape)
    for wrong_query, wrong_mask in ((query, chain_mask), (query, lost_ancestor), (wrong_fold, mask)):
        actual, _ = grouped_query_sdpa(module, wrong_query, key, value, wrong_mask, scaling=SCALE)
        assert not _close(actual, expected)


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
        assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5)
        # a causal prefill is not folded: transformers' own SDPA, bitwise
        assert torch.equal(switched(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_switched_models_generate_the_greedy_tokens_of_transformers_sdpa():
    """What the tolerance must protect: tree verification through the folded path, then plain
    generation, gives token for token what the unswitched model's `generate` gives."""
    reference = tiny_llama(3, vocab_size=64, hidden_size=48, num_heads=6, num_kv_heads=2, eos_token_id=63)
    target, draft = copy.deepcopy(reference), perturbed_copy(reference, 0.05)
    prompts = [[1, 2, 3], [4, 4, 4, 4, 7, 2], list(range(40))]
    outputs = check_greedy_identity(lambda model: ModelTreeDrafter(draft, widths=(2, 2, 1), mode="top"),
                                    target, prompts, max_new_tokens=24)
    assert target.config._attn_implementation == GROUPED_QUERY_SDPA
    for prompt, output in zip(prompts, outputs):
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            expected = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=24, eos_token_id=63, pad_token_id=63)
        assert output == expected[0, len(prompt):].tolist()


def test_models_without_grouped_queries_or_sdpa_are_left_alone():
    plain = tiny_llama(num_heads=4, num_kv_heads=4)
    assert not use_grouped_query_sdpa(plain) and plain.config._attn_implementation == "sdpa"
    eager = tiny_llama(num_heads=4, num_kv_heads=2)
    eager.set_attn_implementation("eager")
    assert not use_grouped_query_sdpa(eager) and eager.config._attn_implementation == "eager"
