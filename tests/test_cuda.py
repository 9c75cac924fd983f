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


# -- CUDA graphs: the batched step replayed from captured graphs ------------------------------------

def _greedy_reference(model, prompt, max_new_tokens, eos):
    with torch.inference_mode():
        ids = torch.tensor([prompt], device=CUDA)
        output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos)
    return output[0, len(prompt):].tolist()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_cuda_graph_steps_decode_exactly_like_generate(batch_size):
    """float64, mixed drafters (a draft model, none, a tree), mixed prompts and stops: every
    sequence equals `model.generate`, and the steps really ran from CUDA graphs."""
    import itertools

    from specdec import RejectionSampling
    from specdec.drafters.none import NoDrafter
    from specdec.scheduler import StepScheduler
    from specdec.verifiers.hf import HFVerifier

    eos = 23
    model = tiny_llama(3, vocab_size=24, max_positions=128, eos_token_id=eos).double().to(CUDA)
    draft = perturbed_copy(model.cpu(), 0.3, seed=5).to(CUDA)
    model.to(CUDA)
    kinds = itertools.cycle([lambda: DraftModelDrafter(draft, 3), NoDrafter,
                             lambda: ModelTreeDrafter(draft, (2, 2, 1), mode="top")])
    verifier = HFVerifier(model)
    scheduler = StepScheduler(verifier, RejectionSampling(), drafter_factory=lambda: next(kinds)(),
                              max_batch_size=batch_size)
    prompts = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(20)) * 2, [9, 8], [3] * 30, [11, 12, 13, 14], [6, 1]]
    lengths = [17, 9, 24, 5, 30, 12, 1, 20]
    handles = [scheduler.submit(prompt, SamplingParams(max_new_tokens=length)) for prompt, length in zip(prompts, lengths)]
    scheduler.run()
    for handle, prompt, length in zip(handles, prompts, lengths):
        assert handle.result.tokens == _greedy_reference(model, prompt, length, eos)
    assert verifier.runner.graphs.replays > 0 and verifier.runner.graphs.captures > 0


def test_cuda_graph_outputs_survive_the_next_replay():
    from specdec.model_runner import CausalLMRunner

    runner = CausalLMRunner(tiny_llama(0, vocab_size=64).to(CUDA))
    runner.cache.reset_slot(0, 64)
    runner.forward(torch.tensor([1, 2, 3]), torch.arange(3))  # eager: allocates the cache
    runner.commit(3)
    first, _ = runner.forward(torch.tensor([4]), torch.tensor([3]))
    kept = first.clone()
    second, _ = runner.forward(torch.tensor([5]), torch.tensor([3]))
    assert runner.graphs.replays == 2 and runner.graphs.captures == 1
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    assert not torch.equal(first, second)


def test_captured_graphs_are_listed_by_key_and_replay_alone():
    from specdec.model_runner import CausalLMRunner

    runner = CausalLMRunner(tiny_llama(0, vocab_size=64).to(CUDA))
    runner.cache.reset_slot(0, 64)
    runner.forward(torch.tensor([1, 2, 3]), torch.arange(3))  # eager: allocates the cache
    runner.commit(3)
    runner.forward(torch.tensor([4]), torch.tensor([3]))  # one token, one row: captured
    [(key, graph)] = runner.graphs.captured().items()
    assert key[:3] == (0, 1, 1) and isinstance(graph, torch.cuda.CUDAGraph)
    graph.replay()
    torch.cuda.synchronize()
