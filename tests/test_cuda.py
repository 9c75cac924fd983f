"""The losslessness guarantees on a CUDA GPU. Skipped where there is none (CI has none); on a GPU
machine run `python -m pytest tests/test_cuda.py`."""

import copy

import pytest
import torch

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.model_runner import CausalLMRunner
from specdec.params import SamplingParams
from specdec.testing import ModelTreeDrafter, check_greedy_identity, check_sampling_distribution, perturbed_copy, tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_grouped_query_sdpa_equals_sdpa_on_cuda(dtype):
    reference = tiny_llama(3, vocab_size=64, hidden_size=64, num_heads=4, num_kv_heads=2).to(CUDA, dtype)
    switched = copy.deepcopy(reference)
    CausalLMRunner(switched)  # switches the attention to specdec's grouped-query SDPA
    parents = [-1, 0, 0, 1, 2, 3, 4]  # two sibling chains under node 0
    allowed = torch.eye(7, dtype=torch.bool)
    for node, parent in enumerate(parents):
        while parent >= 0:
            allowed[node, parent], parent = True, parents[parent]
    mask = torch.zeros(1, 1, 7, 7, dtype=dtype, device=CUDA).masked_fill_(~allowed.to(CUDA), torch.finfo(dtype).min)
    ids, positions = torch.arange(1, 8, device=CUDA)[None], torch.tensor([[0, 1, 1, 2, 2, 3, 3]], device=CUDA)
    with torch.inference_mode():
        expected = reference(input_ids=ids, position_ids=positions, attention_mask=mask).logits
        actual = switched(input_ids=ids, position_ids=positions, attention_mask=mask).logits
    # the folded shape may round differently (see core/attention.py): each dtype's own tolerance
    torch.testing.assert_close(actual, expected)


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0, vocab_size=64, eos_token_id=63).to(CUDA)


def test_greedy_identity_on_cuda_with_a_draft_model(target):
    draft = perturbed_copy(target.cpu(), 0.05).to(CUDA)
    target.to(CUDA)
    prompts = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(63)) * 2]
    check_greedy_identity(lambda model: DraftModelDrafter(draft, 4), target, prompts, max_new_tokens=30)


def test_greedy_identity_on_cuda_with_trees(target):
    draft = perturbed_copy(target.cpu(), 0.05).to(CUDA)
    target.to(CUDA)
    check_greedy_identity(lambda model: ModelTreeDrafter(draft, widths=(2, 2, 1), mode="top"), target,
                          [[1, 2, 3], [4, 4, 4, 4, 7, 2]], max_new_tokens=20)


def test_sampling_distribution_on_cuda():
    sampling_target = tiny_llama(0, vocab_size=12, init_std=0.1)
    draft = perturbed_copy(sampling_target, 0.3).to(CUDA)
    check_sampling_distribution(lambda model: DraftModelDrafter(draft, 3), sampling_target.to(CUDA),
                                SamplingParams(temperature=1.0), num_samples=1000)
