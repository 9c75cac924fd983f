"""End to end on the real default model, SmolLM2-135M-Instruct (the slow tier: ~1 min, more on
the first run, which converts the GGUF into the user cache)."""

import subprocess
import sys

import pytest
import torch

from specdec import Pipeline, RejectionSampling, SamplingParams, SpeculativeDecoder
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.testing import perturbed_copy
from specdec.verifiers.hf import HFVerifier

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the factorial of n.",
    "Summarize: The cat sat on the mat. The mat was red. The cat was happy on the red mat.",
]


@pytest.fixture(scope="module")
def pipeline():
    torch.set_num_threads(2)
    # torch's kernel: the tests below compare specdec's tokens with `model.generate`'s, which
    # always runs torch's (auto may choose oneDNN, whose additions round differently)
    return Pipeline.from_dict({"target": {"linear_kernel": "torch"}, "sampling": {"max_new_tokens": 48}})


def test_default_model_answers_a_chat_prompt(pipeline):
    result = pipeline.generate([{"role": "user", "content": PROMPTS[0]}])
    assert "Paris" in result.text
    assert pipeline.tokenizer.chat_template and result.stats.steps == len(result.token_ids)


def test_speculative_greedy_equals_plain_greedy_on_real_prompts(pipeline):
    model = pipeline.model
    draft = perturbed_copy(model, 0.02, seed=3)  # agrees often, not always: real rejections
    plain = SpeculativeDecoder(HFVerifier(model), NoDrafter(), RejectionSampling())
    speculative = SpeculativeDecoder(HFVerifier(model), DraftModelDrafter(draft, 4), RejectionSampling())
    params = SamplingParams(max_new_tokens=48)
    accepted = 0
    for text in PROMPTS:
        prompt = pipeline.encode([{"role": "user", "content": text}])
        reference = plain.generate(prompt, params).tokens
        result = speculative.generate(prompt, params)
        assert result.tokens == reference
        accepted += result.stats.accepted_draft_tokens
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=48)
        assert hf[0, len(prompt):].tolist() == reference
    assert accepted > 0


def test_cli_generates_with_the_default_pipeline(tmp_path):
    done = subprocess.run([sys.executable, "-m", "specdec.cli", "generate", "-n", "16",
                           "Name three primary colors."], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "mean accepted tokens" in done.stderr and "tok/s" in done.stderr


def test_two_threads_on_one_pipeline_each_get_their_own_answer():
    """D1 as reported: two threads behind a barrier call `generate` on one pipeline. With one
    slot the second queues behind the first, so each output equals its answer decoded alone
    (batched decoding of both is covered on tiny float64 models in test_scheduler.py)."""
    import threading

    shared = Pipeline.from_dict({"drafter": {"type": "none"}, "scheduler": {"max_batch_size": 1}})
    prompts = [[{"role": "user", "content": text}] for text in PROMPTS[:2]]
    alone = [shared.generate(prompt, max_new_tokens=24) for prompt in prompts]
    barrier = threading.Barrier(2)
    results = {}

    def work(index):
        barrier.wait()
        results[index] = shared.generate(prompts[index], max_new_tokens=24)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [results[index].token_ids for index in range(2)] == [result.token_ids for result in alone]
    assert [results[index].finish_reason for index in range(2)] == [result.finish_reason for result in alone]
    assert all(result.token_ids and 0 not in result.token_ids[:3] for result in alone)  # real text, not id 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_default_model_in_16_bits_verifies_trees(dtype):
    """The tree check compares forwards of different shapes, which 16-bit kernels round
    differently (2% of the logits' scale in bfloat16 on a CPU without native bf16): it must not
    take that for a model that ignores positions (`specdec generate --dtype bfloat16` was refused
    so on such a CPU), and speculation must then run."""
    torch.set_num_threads(2)  # how a user runs it: the two-thread bf16 kernels round unlike one thread's
    pipeline = Pipeline.from_dict({"target": {"dtype": dtype}, "sampling": {"max_new_tokens": 8}})
    model, prompt = pipeline.model, pipeline.encode([{"role": "user", "content": "Name a colour."}])
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    expected = SpeculativeDecoder(HFVerifier(model), NoDrafter(), RejectionSampling()).generate(prompt, params).tokens
    speculative = SpeculativeDecoder(HFVerifier(model), DraftModelDrafter(model, 3), RejectionSampling())
    assert speculative.generate(prompt, params).tokens == expected  # its own drafts: all accepted
