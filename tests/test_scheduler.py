"""The step scheduler: each sequence's output is unchanged by the company it keeps.

Greedy identity runs in float64, where a batched forward's different rounding cannot flip an
argmax; the float32 mismatch rate on the default model is a benchmark (docs/benchmarks.md).
"""

import functools
import itertools
import threading

import pytest
import torch

from specdec import BaseDrafter, Draft, InputError, Pipeline, RejectionSampling, SamplingParams
from specdec.budget import DraftBudget, SequenceRecord
from specdec.cost import CostModel
from specdec.cuda_graphs import CUDAGraphForwards, _Graph, row_bucket, span_bucket, width_bucket
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.errors import GenerationError
from specdec.scheduler import StepScheduler
from specdec.testing import (
    ModelTreeDrafter,
    check_sampling_distribution,
    perturbed_copy,
    save_tiny_model,
    tiny_llama,
    tiny_tokenizer,
)
from specdec.verifiers.hf import HFVerifier

VOCAB = 24
EOS = VOCAB - 1


@functools.lru_cache(maxsize=None)
def target():
    return tiny_llama(3, vocab_size=VOCAB, max_positions=128, eos_token_id=EOS).double()


@functools.lru_cache(maxsize=None)
def draft_model():
    return perturbed_copy(target(), 0.3, seed=5)


class FixedChain(BaseDrafter):
    """Proposes the same (mostly wrong) chain every step: rejections at every depth."""

    def propose(self, context):
        return Draft.chain([(context.tokens[-1] + offset) % VOCAB for offset in (1, 2, 3)])


class Raising(BaseDrafter):
    def propose(self, context):
        if context.step == 2:
            raise ZeroDivisionError("drafter bug")
        return Draft.empty()


def drafter_cycle():
    """Mixed drafters: a draft model, plain decoding, a token tree, a wrong chain."""
    kinds = itertools.cycle([
        lambda: DraftModelDrafter(draft_model(), 3),
        NoDrafter,
        lambda: ModelTreeDrafter(draft_model(), (2, 2, 1), mode="top"),
        FixedChain,
    ])
    return lambda: next(kinds)()


def scheduler(max_batch_size, factory=None, budget=None):
    return StepScheduler(HFVerifier(target()), RejectionSampling(), drafter_factory=factory or drafter_cycle(),
                         max_batch_size=max_batch_size, budget=budget)


def requests():
    """Mixed prompt lengths; stops (EOS or max_new_tokens) at different steps."""
    prompts = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(20)) * 2, [9, 8], [3] * 30, [11, 12, 13, 14], [6, 1]]
    lengths = [17, 9, 24, 5, 30, 12, 1, 20]
    return [(prompt, SamplingParams(max_new_tokens=length)) for prompt, length in zip(prompts, lengths)]


@functools.lru_cache(maxsize=None)
def reference_outputs():
    """Batch-1 plain decoding, checked against `model.generate`."""
    plain = StepScheduler(HFVerifier(target()), RejectionSampling(), [NoDrafter()], max_batch_size=1)
    outputs = []
    for prompt, params in requests():
        tokens = plain.generate_batch([prompt], params)[0].tokens
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            expected = target().generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=params.max_new_tokens, eos_token_id=EOS,
                                         pad_token_id=EOS)[0, len(prompt):].tolist()
        assert tokens == expected
        outputs.append(tokens)
    return outputs


def test_reference_stops_at_different_steps():
    outputs = reference_outputs()
    assert len({len(tokens) for tokens in outputs}) > 4
    assert any(tokens[-1] == EOS for tokens in outputs)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_outputs_in_a_batch_equal_batch_one_and_model_generate(batch_size):
    runner = scheduler(batch_size)
    handles = [runner.submit(prompt, params) for prompt, params in requests()]
    runner.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()
    assert all(handle.error is None for handle in handles)


def test_requests_admitted_while_others_run_equal_batch_one():
    runner = scheduler(4)
    pending = list(zip(requests(), reference_outputs()))
    live = []
    while pending or runner.has_work:
        if pending:  # one newcomer per step: continuous batching
            (prompt, params), expected = pending.pop(0)
            live.append((runner.submit(prompt, params), expected))
        runner.step()
        assert runner.num_active <= 4
    assert all(handle.result.tokens == expected for handle, expected in live)


def test_speculation_off_for_one_request_and_a_draft_budget_keep_outputs():
    budget = DraftBudget(lambda batch_size: CostModel(node_cost=0.5), sizes=(1, 2))
    runner = scheduler(8, budget=budget)
    handles = [runner.submit(prompt, params, max_draft_tokens=0 if index % 2 else None)
               for index, (prompt, params) in enumerate(requests())]
    runner.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()
    assert all(handle.stats.draft_tokens == 0 for handle in handles[1::2])


def test_a_draft_budget_caps_draft_nodes_per_sequence():
    seen = []

    class Wide(BaseDrafter):
        def propose(self, context):
            seen.append(context.max_nodes)
            return Draft.chain([1, 2, 3, 4, 5, 6])

    budget = DraftBudget(lambda batch_size: CostModel(node_cost=0.01), sizes=(2,))
    runner = scheduler(4, factory=Wide, budget=budget)
    handles = [runner.submit([1, 2, 3], SamplingParams(max_new_tokens=10)) for _ in range(3)]
    runner.run()
    assert 2 in seen
    assert all(handle.stats.draft_tokens <= 2 * handle.stats.steps for handle in handles)


def test_prepare_measures_every_batch_size_so_no_step_measures_the_draft_cost():
    """A cost model measured on first use runs inside the step that first reaches its batch size
    and stalls the whole batch; after `prepare` the steps only read what was measured."""
    asked = []

    def cost_at(batch_size):
        asked.append(batch_size)
        return CostModel(node_cost=0.5)

    runner = scheduler(8, budget=DraftBudget(cost_at, sizes=(1, 2)))
    runner.prepare(6)
    assert sorted(set(asked)) == [2, 3, 4, 5, 6]
    prepared = len(asked)
    handles = [runner.submit(prompt, params) for prompt, params in requests()[:6]]
    runner.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()[:6]
    assert set(asked[prepared:]) <= {2, 3, 4, 5, 6}  # steps ask again (the real one caches), never beyond


def test_a_lone_draft_in_a_batch_is_cut_when_it_cannot_pay_for_the_whole_padded_forward():
    """Before drafting the budget cannot know who will draft; after, one sequence's draft must
    pay for a forward every sequence of the batch runs at its width, and here it cannot."""

    class Wide(BaseDrafter):
        def propose(self, context):
            return Draft.chain([1, 2, 3, 4, 5, 6])

    kinds = itertools.cycle([Wide] + [NoDrafter] * 7)
    budget = DraftBudget(lambda batch_size: CostModel(node_cost=0.3))
    runner = scheduler(8, factory=lambda: next(kinds)(), budget=budget)
    params = SamplingParams(max_new_tokens=8, stop_token_ids=())
    handles = [runner.submit([1 + index, 2, 3], params) for index in range(8)]
    runner.run()
    assert all(handle.stats.steps == 8 and handle.stats.draft_tokens == 0 for handle in handles)
    assert budget.max_nodes(8, [SequenceRecord([], [])] * 8) > 0  # as if all drafted, it would have paid
    assert budget.trimmed_size(8, [(SequenceRecord([], []), 6)] * 8) > 0
    assert budget.trimmed_size(8, [(SequenceRecord([], []), 6)] + [(SequenceRecord([], []), 0)] * 7) == 0


def test_the_budget_learns_its_prior_from_finished_sequences():
    """A newcomer has no history: its prior comes from what finished sequences achieved, so a
    population that rarely accepts stops newcomers' drafts from widening the batch."""
    budget = DraftBudget(lambda batch_size: CostModel(node_cost=0.3))
    newcomer = SequenceRecord([], [])
    assert budget.trimmed_size(4, [(newcomer, 4)] * 4) > 0  # the optimistic start: 0.6 ** depth
    for _ in range(10):
        budget.retire(SequenceRecord([40, 40, 40, 40], [4, 1, 0, 0]))
    assert budget.priors(2) == pytest.approx([(40 + 8 * 0.6) / (400 + 8), (10 + 8 * 0.36) / (400 + 8)])
    assert budget.trimmed_size(4, [(newcomer, 4)] * 4) == 0


def test_budget_prefers_plain_decoding_when_verification_is_expensive():
    record = SequenceRecord(drafted_at_depth=[50, 50, 50], accepted_at_depth=[10, 2, 0])
    cheap = DraftBudget(lambda batch_size: CostModel(node_cost=0.02))
    dear = DraftBudget(lambda batch_size: CostModel(node_cost=1.0))
    assert cheap.max_nodes(8, [record] * 8) >= 1
    assert dear.max_nodes(8, [record] * 8) == 0
    accepting = SequenceRecord(drafted_at_depth=[50] * 6, accepted_at_depth=[48, 45, 40, 35, 30, 20])
    assert DraftBudget(lambda batch_size: CostModel(node_cost=0.2)).max_nodes(8, [accepting] * 8) >= 3


def test_the_budget_counts_drafting_time_before_drafting():
    """Drafters run one after another on the host: when a batch's drafting takes longer than its
    forward gains, the budget drafts nothing (a GPU step of milliseconds at batch 64); the same
    acceptance with cheap drafting drafts."""
    accepting = dict(drafted_at_depth=[50] * 4, accepted_at_depth=[40, 30, 20, 10])
    cost = CostModel(node_cost=0.05, plain_seconds=0.004)
    budget = DraftBudget(lambda batch_size: cost)
    cheap = SequenceRecord(**accepting, propose_seconds=0.001, proposals=100)  # 10 us per call
    dear = SequenceRecord(**accepting, propose_seconds=0.05, proposals=100)  # 0.5 ms per call
    assert budget.max_nodes(16, [cheap] * 16) >= 3
    assert budget.max_nodes(16, [dear] * 16) == 0  # 8 ms of drafting on a 4 ms step
    assert budget.max_nodes(2, [dear] * 2) >= 3  # 1 ms of drafting on a small batch still pays
    # once drafted, drafting is paid for: the cut after drafting weighs verification only
    assert budget.trimmed_size(16, [(dear, 4)] * 16) >= 3
    # a newcomer's drafting time is what finished sequences' took
    newcomer = SequenceRecord(**accepting)
    assert budget.max_nodes(16, [newcomer] * 16) >= 3
    budget.retire(dear)
    assert budget.max_nodes(16, [newcomer] * 16) == 0
    # an unmeasured plain step counts no drafting time
    assert DraftBudget(lambda batch_size: CostModel(node_cost=0.05)).max_nodes(16, [dear] * 16) >= 3


def test_the_scheduler_times_each_sequences_proposals():
    budget = DraftBudget(lambda batch_size: CostModel(node_cost=0.01))
    runner = scheduler(2, factory=FixedChain, budget=budget)
    params = SamplingParams(max_new_tokens=6, stop_token_ids=())
    handles = [runner.submit([1 + index, 2, 3], params) for index in range(2)]
    runner.run()
    for handle in handles:
        assert handle.proposals == handle.stats.steps - 1  # the last step has no room for a draft
        assert handle.propose_seconds > 0
    assert budget._retired.proposals == sum(handle.proposals for handle in handles)


def test_a_drafter_that_raises_fails_its_own_sequence_only():
    kinds = itertools.cycle([Raising, NoDrafter])
    runner = scheduler(4, factory=lambda: next(kinds)())
    handles = [runner.submit(prompt, params) for prompt, params in requests()[:4]]
    runner.run()
    assert isinstance(handles[0].error, GenerationError) and "drafter bug" in str(handles[0].error)
    assert isinstance(handles[0].error.__cause__, ZeroDivisionError)
    for handle, expected in zip(handles[1:], reference_outputs()[1:4]):
        if handle.error is None:
            assert handle.result.tokens == expected
    assert sum(handle.error is None for handle in handles) >= 2


def test_bad_input_is_refused_at_submit_and_the_others_continue():
    runner = scheduler(4)
    good = runner.submit(*requests()[0])
    with pytest.raises(InputError, match="outside the model vocabulary"):
        runner.submit([1, VOCAB + 3], SamplingParams())
    with pytest.raises(InputError, match="at most 128"):
        runner.submit([1] * 200, SamplingParams())
    with pytest.raises(InputError, match="max_draft_tokens"):
        runner.submit([1], SamplingParams(), max_draft_tokens=-1)
    runner.run()
    assert good.result.tokens == reference_outputs()[0]


def test_cancelling_frees_the_slot_and_the_rest_are_unaffected():
    runner = scheduler(2)
    handles = [runner.submit(prompt, params) for prompt, params in requests()[:4]]
    runner.step()
    runner.cancel(handles[0])
    assert handles[0].result.finish_reason == "cancelled"
    runner.run()
    assert [handle.result.tokens for handle in handles[1:]] == reference_outputs()[1:4]


def test_a_request_with_its_own_drafter_uses_it_and_the_pool_never_gets_it():
    """submit(drafter=...): e.g. a server request with its own drafter params."""
    pooled = []

    def factory():
        pooled.append(NoDrafter())
        return pooled[-1]

    runner = scheduler(2, factory=factory)
    own = FixedChain()
    handles = [runner.submit(*requests()[0], drafter=own), runner.submit(*requests()[1]),
               runner.submit(*requests()[2])]
    assert runner.num_waiting == 3
    runner.step()
    assert runner.num_waiting == 1 and handles[0].drafter is own  # two slots: the third waits
    runner.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()[:3]
    assert handles[0].stats.draft_tokens > 0 and handles[1].stats.draft_tokens == 0
    assert own not in runner._free_drafters and len(runner._free_drafters) == len(pooled) == 1


def test_slot_reuse_leaves_no_stale_cache():
    """The same request in a reused slot (after longer and shorter sequences) equals a fresh run."""
    runner = scheduler(2)
    for _ in range(2):
        handles = [runner.submit(prompt, params) for prompt, params in requests()]
        runner.run()
        assert [handle.result.tokens for handle in handles] == reference_outputs()


def test_sampling_distribution_of_a_sequence_decoded_among_others():
    small = tiny_llama(0, vocab_size=8, init_std=0.1)
    check_sampling_distribution(lambda model: DraftModelDrafter(perturbed_copy(model, 0.5), 3), small,
                                SamplingParams(temperature=1.0), num_samples=600, companions=2)


def test_threads_generating_on_one_pipeline_get_their_own_outputs(tmp_path):
    """D1: concurrent `generate` calls on one pipeline share batched steps, never a cache."""
    model = tiny_llama(4, vocab_size=len(tiny_tokenizer()), max_positions=256)
    pipeline = Pipeline.from_dict({"drafter": {"type": "none"}, "scheduler": {"max_batch_size": 2}},
                                  model=model, tokenizer=tiny_tokenizer())
    prompts = ["hello there", "a much longer prompt, with punctuation!"]
    alone = [pipeline.generate(prompt, max_new_tokens=24).token_ids for prompt in prompts]
    barrier = threading.Barrier(len(prompts))
    results: dict[int, list[int]] = {}

    def work(index):
        barrier.wait()
        results[index] = pipeline.generate(prompts[index], max_new_tokens=24).token_ids

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[index] for index in range(len(prompts))] == alone


def test_generate_batch_equals_one_by_one_on_a_pipeline(tmp_path):
    # float32 (pipelines load no float64): the peaked tiny model keeps argmaxes far from ties
    path = save_tiny_model(tmp_path / "tiny", seed=4)
    pipeline = Pipeline.from_dict({"target": {"model": path},
                                   "drafter": {"type": "draft_model", "params": {"model": path, "num_tokens": 3}},
                                   # budget off: a draft model as costly as the target does not pay in a
                                   # batch, and this test is about batched drafts
                                   "scheduler": {"max_batch_size": 2, "draft_budget": "off"}})
    prompts = ["abc", "hello world", "z"]
    one_by_one = [pipeline.generate(prompt, max_new_tokens=12).token_ids for prompt in prompts]
    batched = pipeline.generate_batch(prompts, max_new_tokens=12)
    assert [result.token_ids for result in batched] == one_by_one
    assert [result.prompt_token_ids for result in batched] == [pipeline.encode(prompt) for prompt in prompts]
    assert all(result.stats.accepted_draft_tokens > 0 for result in batched)


class BatchedChain(BaseDrafter):
    """Drafts like FixedChain, but through the optional batched hook."""

    calls: list[int] = []

    @classmethod
    def propose_batch(cls, drafters, contexts):
        cls.calls.append(len(drafters))
        return [Draft.chain([(context.tokens[-1] + offset) % VOCAB for offset in (1, 2, 3)]) for context in contexts]

    def propose(self, context):  # pragma: no cover - the scheduler uses propose_batch
        raise AssertionError("propose_batch should be used")


def test_drafters_with_propose_batch_are_asked_once_per_step_for_all_their_sequences():
    BatchedChain.calls.clear()
    runner = scheduler(4, factory=BatchedChain)
    handles = [runner.submit(prompt, params) for prompt, params in requests()[:4]]
    runner.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()[:4]
    assert max(BatchedChain.calls) == 4 and all(handle.stats.draft_tokens > 0 for handle in handles)


def test_budget_counts_the_sequences_that_do_not_draft():
    """Seven plain sequences pay for the eighth's draft: speculating for one must be worth it for all."""
    good = SequenceRecord(drafted_at_depth=[50, 50], accepted_at_depth=[45, 40])
    budget = DraftBudget(lambda batch_size: CostModel(node_cost=0.3))
    assert budget.max_nodes(1 + 0, [good]) >= 1
    assert budget.max_nodes(8, [good]) == 0


# -- bucketed forwards (the CUDA-graph path), checked on the CPU ------------------------------------
# A stand-in replays the bucketed forward eagerly. What a real CUDA graph adds (capture, replay at
# fixed addresses) is tested in tests/test_cuda.py on a GPU; here every other part of the graph
# path runs: rows padded with empty sequences in the following slots, left-padded columns, the
# bucketed attention span, the packed input buffer a replay reads, output copies, and dropping
# graphs when the cache grows.

class _EagerReplay:
    """A recorded forward replayed eagerly into the same output tensors, like a graph's replay."""

    def __init__(self, forward, outputs):
        self.forward, self.outputs = forward, outputs

    def replay(self):
        logits, hidden = self.forward()
        self.outputs[0].copy_(logits)
        for layer, states in hidden.items():
            self.outputs[1][layer].copy_(states)


class EagerGraphForwards(CUDAGraphForwards):
    """`CUDAGraphForwards` with the capture replaced by an eager recording (runs on the CPU)."""

    def _capture(self, packed_host, first_slot, rows, width, span, layers):
        packed = packed_host.clone()

        def forward():
            return self._forward(packed, first_slot, rows, width, span, width, layers)

        logits, hidden = forward()
        self.captures += 1
        return _Graph(_EagerReplay(forward, (logits, hidden)), packed, logits, hidden)


def with_eager_graphs(verifier: HFVerifier) -> HFVerifier:
    verifier.runner.graphs = EagerGraphForwards(verifier.runner._forward_packed)
    return verifier


def test_buckets():
    assert [row_bucket(rows) for rows in (1, 2, 3, 5, 8, 9, 17, 32, 33)] == [1, 2, 4, 8, 8, 16, 24, 32, 40]
    assert [width_bucket(width) for width in (1, 2, 3, 6, 9, 64)] == [1, 2, 4, 8, 16, 64]
    assert [span_bucket(span, 4096) for span in (1, 256, 257, 1500)] == [256, 256, 512, 2048]
    assert span_bucket(300, 280) == 280  # never past the cache


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_bucketed_forwards_decode_exactly_like_eager(batch_size):
    """Mixed drafters (a draft model, none, a tree, a wrong chain), prompts, stops: float64
    greedy outputs equal batch-1 plain decoding and `model.generate`."""
    verifier = with_eager_graphs(HFVerifier(target()))
    scheduler = StepScheduler(verifier, RejectionSampling(), drafter_factory=drafter_cycle(),
                              max_batch_size=batch_size)
    handles = [scheduler.submit(prompt, params) for prompt, params in requests()]
    scheduler.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()
    graphs = verifier.runner.graphs
    assert graphs.replays > 0 and graphs.captures >= len(graphs) > 0


def test_graphs_are_dropped_when_the_cache_grows():
    verifier = with_eager_graphs(HFVerifier(target()))
    scheduler = StepScheduler(verifier, RejectionSampling(), drafter_factory=drafter_cycle(), max_batch_size=1)
    short, long = requests()[1], requests()[3]
    scheduler.generate_batch([short[0]], short[1])
    graphs = verifier.runner.graphs
    captured = graphs.captures
    buffer = verifier.runner.cache.buffer
    verifier.runner.cache.ensure_capacity(verifier.runner.cache.capacity * 2)  # what a longer request does
    assert verifier.runner.cache.buffer is not buffer
    assert scheduler.generate_batch([long[0]], long[1])[0].tokens == reference_outputs()[3]
    assert graphs.captures > captured


def test_outputs_are_copies_that_the_next_replay_leaves_alone():
    verifier = with_eager_graphs(HFVerifier(target()))
    runner = verifier.runner
    runner.cache.reset_slot(0, 64)
    runner.forward(torch.tensor([1, 2, 3]), torch.arange(3))  # eager: allocates the cache
    runner.commit(3)
    first, _ = runner.forward(torch.tensor([4]), torch.tensor([3]))
    kept = first.clone()
    runner.forward(torch.tensor([5]), torch.tensor([3]))  # same bucket: a replay
    assert runner.graphs.replays == 2
    torch.testing.assert_close(first, kept, rtol=0, atol=0)


def test_prepared_graphs_serve_every_step_without_capturing():
    """`prepare` allocates the cache and captures every bucket up front: decoding afterwards
    replays only (a capture inside a timed or served step would stall it)."""
    verifier = with_eager_graphs(HFVerifier(target()))
    scheduler = StepScheduler(verifier, RejectionSampling(), drafter_factory=drafter_cycle(), max_batch_size=8)
    longest = max(len(prompt) + params.max_new_tokens for prompt, params in requests())
    scheduler.prepare(8, longest)
    graphs = verifier.runner.graphs
    captured = graphs.captures
    assert captured == len(graphs) > 0
    handles = [scheduler.submit(prompt, params) for prompt, params in requests()]
    scheduler.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()
    assert graphs.captures == captured and graphs.replays > captured


def test_prepare_allocates_the_cache_up_front_on_cpu_so_no_step_grows_it():
    """Without CUDA graphs too, `prepare` allocates the whole cache: growing it inside a step
    copies every slot's buffer while the batch waits (seconds for a large batch), so a server or
    a benchmark that prepared never pays it."""
    verifier = HFVerifier(target())
    assert verifier.runner.graphs is None
    scheduler = StepScheduler(verifier, RejectionSampling(), drafter_factory=drafter_cycle(), max_batch_size=8)
    longest = max(len(prompt) + params.max_new_tokens for prompt, params in requests())
    scheduler.prepare(8, longest)
    cache = verifier.runner.cache
    buffer = cache.buffer
    assert buffer is not None and cache.num_slots >= 8 and cache.capacity >= longest
    handles = [scheduler.submit(prompt, params) for prompt, params in requests()]
    scheduler.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()
    assert cache.buffer is buffer  # never reallocated


@pytest.mark.parametrize("batch_size", [3, 8])
def test_prompts_prefilled_together_decode_exactly_like_one_by_one(batch_size):
    """On CUDA newcomers' prompts share one prefill forward (`HFVerifier.group_prefills`);
    forced on here, float64 outputs still equal batch-1 plain decoding and `model.generate`."""
    verifier = HFVerifier(target())
    verifier.group_prefills = True
    scheduler = StepScheduler(verifier, RejectionSampling(), drafter_factory=drafter_cycle(), max_batch_size=batch_size)
    handles = [scheduler.submit(prompt, params) for prompt, params in requests()]
    scheduler.run()
    assert [handle.result.tokens for handle in handles] == reference_outputs()
