"""The step engine: bad input, statistics, streaming, stops, and drafts it must refuse."""

import functools

import pytest
import torch

from specdec import (
    BaseDrafter,
    Draft,
    DraftError,
    InputError,
    ModelMismatchError,
    RejectionSampling,
    SamplingParams,
    SpeculativeDecoder,
)
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.testing import perturbed_copy, tiny_llama
from specdec.verifiers.hf import HFVerifier

VOCAB = 20


@functools.lru_cache(maxsize=None)
def model():
    return tiny_llama(7, vocab_size=VOCAB, max_positions=64)


def decoder(drafter=None, eos=()):
    return SpeculativeDecoder(HFVerifier(model(), eos), drafter or NoDrafter(), RejectionSampling(),
                              decode=lambda ids: "".join(chr(ord("a") + i) for i in ids))


class FixedDrafter(BaseDrafter):
    def __init__(self, draft):
        self.draft = draft

    def propose(self, context):
        return self.draft


def test_empty_prompt_is_refused():
    with pytest.raises(InputError, match="prompt is empty"):
        decoder().generate([])


def test_prompt_longer_than_the_context_is_refused():
    with pytest.raises(InputError, match="at most 64"):
        decoder().generate([1] * 64)


def test_prompt_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(InputError, match="outside the model vocabulary"):
        decoder().generate([1, VOCAB])


def test_non_positive_max_new_tokens_is_refused():
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder().generate([1, 2], max_new_tokens=0)


def test_generation_stops_at_the_end_of_the_context():
    result = decoder().generate([1] * 60, max_new_tokens=50)
    assert len(result.tokens) == 4 and result.finish_reason == "length"


def test_draft_tokens_outside_the_vocabulary_are_refused():
    with pytest.raises(DraftError, match=f"token id {VOCAB} at node 1"):
        decoder(FixedDrafter(Draft.chain([1, VOCAB]))).generate([1, 2])


def test_draft_q_over_another_vocabulary_is_refused():
    drafter = FixedDrafter(Draft.chain([1], q=torch.ones(1, VOCAB + 3) / (VOCAB + 3)))
    with pytest.raises(DraftError, match="share one vocabulary"):
        decoder(drafter).generate([1, 2], temperature=1.0)


def test_q_that_gives_the_drafted_token_zero_probability_is_refused():
    q = torch.zeros(1, VOCAB)
    q[0, 3] = 1.0
    with pytest.raises(DraftError, match="exact distribution"):
        decoder(FixedDrafter(Draft.chain([1], q=q))).generate([1, 2], temperature=1.0, seed=0)


def test_a_drafter_returning_something_else_is_refused():
    with pytest.raises(DraftError, match="expected a specdec.Draft"):
        decoder(FixedDrafter([1, 2])).generate([1, 2])


def test_draft_model_with_another_vocabulary_is_refused():
    other = tiny_llama(0, vocab_size=VOCAB + 4)
    with pytest.raises(ModelMismatchError, match="vocabulary"):
        DraftModelDrafter(other, 3, target_vocab_size=VOCAB)


def test_drafts_deeper_than_the_budget_are_trimmed():
    reference = decoder().generate([3, 4], max_new_tokens=3).tokens
    deep = FixedDrafter(Draft.chain(reference + [5, 6, 7]))
    result = decoder(deep).generate([3, 4], max_new_tokens=3)
    assert result.tokens == reference
    assert result.stats.drafted_at_depth == [1, 1]  # budget: max_new_tokens - 1


def test_stats_count_steps_and_accepted_tokens():
    perfect = DraftModelDrafter(model(), num_tokens=4)
    result = decoder(perfect).generate([1, 2, 3], max_new_tokens=11)
    stats = result.stats
    # a perfect drafter: two steps of 5 tokens (4 accepted + bonus), then one undrafted token
    assert stats.steps == 3 and stats.new_tokens == 11
    assert stats.accepted_length_histogram == [1, 0, 0, 0, 2]
    assert stats.drafted_at_depth == [2, 2, 2, 2] and stats.accepted_at_depth == [2, 2, 2, 2]
    assert stats.mean_accepted_tokens == pytest.approx(11 / 3)
    assert stats.acceptance_by_position[0] == 1.0
    assert stats.draft_seconds > 0 and stats.verify_seconds > 0 and stats.wall_seconds > 0
    plain = decoder().generate([1, 2, 3], max_new_tokens=11).stats
    assert plain.mean_accepted_tokens == 1.0 and plain.draft_tokens == 0 and plain.steps == 11


def test_stream_yields_the_same_tokens_as_generate():
    drafter = DraftModelDrafter(perturbed_copy(model(), 0.3), 3)
    expected = decoder(drafter).generate([4, 5], max_new_tokens=15, temperature=0.8, seed=3)
    stream = decoder(drafter).stream([4, 5], SamplingParams(max_new_tokens=15, temperature=0.8, seed=3))
    assert list(stream) == expected.tokens
    assert stream.result.tokens == expected.tokens and stream.result.stats.steps == expected.stats.steps


def test_same_seed_same_output_under_sampling():
    drafter = DraftModelDrafter(perturbed_copy(model(), 0.3), 3)
    first = decoder(drafter).generate([4, 5], max_new_tokens=20, temperature=1.0, seed=11).tokens
    second = decoder(drafter).generate([4, 5], max_new_tokens=20, temperature=1.0, seed=11).tokens
    assert first == second


def test_stop_token_ids_override_the_model_eos():
    tokens = decoder().generate([1, 2], max_new_tokens=10).tokens
    stop = tokens[3]
    result = decoder(DraftModelDrafter(model(), 4)).generate([1, 2], max_new_tokens=10, stop_token_ids=(stop,))
    assert result.tokens == tokens[: tokens.index(stop) + 1] and result.finish_reason == "stop"


def test_stop_strings_end_generation_at_the_completing_token():
    tokens = decoder().generate([1, 2], max_new_tokens=12).tokens
    text = "".join(chr(ord("a") + i) for i in tokens)
    stop = text[4:6]
    result = decoder(DraftModelDrafter(model(), 4)).generate([1, 2], max_new_tokens=12, stop_strings=(stop,))
    end = text.index(stop) + len(stop)
    assert result.tokens == tokens[:end] and result.finish_reason == "stop"


def test_stop_strings_need_a_tokenizer():
    plain = SpeculativeDecoder(HFVerifier(model()), NoDrafter(), RejectionSampling())
    with pytest.raises(InputError, match="tokenizer"):
        plain.generate([1], stop_strings=("x",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_models_that_ignore_position_ids_are_refused(dtype):
    """ALiBi-style models place keys by cache index; a tree would be verified wrong, silently.
    16-bit forwards round differently per shape: the check must still see this through it."""
    broken = tiny_llama(7, vocab_size=VOCAB).to(dtype)
    forward = broken.forward
    broken.forward = lambda *args, position_ids=None, **kwargs: forward(*args, **kwargs)
    with pytest.raises(ModelMismatchError, match="does not honour position ids"):
        HFVerifier(broken)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_models_that_ignore_the_tree_mask_are_refused(dtype):
    broken = tiny_llama(7, vocab_size=VOCAB).to(dtype)
    forward = broken.forward
    broken.forward = lambda *args, attention_mask=None, **kwargs: forward(*args, **kwargs)
    with pytest.raises(ModelMismatchError, match="does not honour position ids or custom attention masks"):
        HFVerifier(broken)


def test_models_that_ignore_the_cache_are_refused():
    """A transformers version that takes the cache under another name would swallow ours in
    **kwargs and decode every step without context: wrong text, silently."""
    broken = tiny_llama(7, vocab_size=VOCAB)
    forward = broken.forward

    def forward_without_cache(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                              **kwargs):
        kwargs.pop("cache", None)
        return forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    broken.forward = forward_without_cache
    plain = SpeculativeDecoder(HFVerifier(broken), NoDrafter(), RejectionSampling())
    with pytest.raises(ModelMismatchError, match="ignored specdec's KV cache"):
        plain.generate([1, 2, 3], SamplingParams(max_new_tokens=4))


def test_the_cache_goes_under_the_name_the_forward_takes():
    renamed = tiny_llama(7, vocab_size=VOCAB)
    forward = renamed.forward
    renamed.forward = lambda input_ids=None, past_key_values=None, **kwargs: forward(
        input_ids=input_ids, cache=past_key_values, **kwargs)
    params = SamplingParams(max_new_tokens=6)
    expected = SpeculativeDecoder(HFVerifier(tiny_llama(7, vocab_size=VOCAB)), NoDrafter(), RejectionSampling())
    actual = SpeculativeDecoder(HFVerifier(renamed), NoDrafter(), RejectionSampling())
    assert actual.generate([1, 2, 3], params).tokens == expected.generate([1, 2, 3], params).tokens


def test_alibi_configs_are_refused():
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(vocab_size=32, hidden_size=16, n_layer=1, n_head=2)).eval()
    with pytest.raises(ModelMismatchError, match="ALiBi"):
        HFVerifier(bloom)


def test_interleaved_streams_on_one_decoder_queue_and_both_complete():
    """A decoder owns one drafter and one cache slot: a second stream waits for the first (and
    iterating it drives the first to its end) instead of sharing the cache."""
    params = SamplingParams(max_new_tokens=8)
    alone = [decoder(DraftModelDrafter(model(), 3)).generate(prompt, params).tokens for prompt in ([1, 2], [3, 4])]
    shared = decoder(DraftModelDrafter(model(), 3))
    first = shared.stream([1, 2], params)
    head = next(first)
    second = shared.stream([3, 4], params)
    assert list(second) == alone[1]
    assert [head] + list(first) == alone[0]


class RootlessPolicy(RejectionSampling):
    def accept(self, logits, draft, params, rng):
        from specdec import Acceptance

        return Acceptance((1,), 0)  # node 1 without its parent node 0


def test_a_policy_path_that_skips_a_parent_is_refused():
    bad = SpeculativeDecoder(HFVerifier(model(), ()), FixedDrafter(Draft.chain([1, 2])), RootlessPolicy())
    with pytest.raises(DraftError, match="not a path down the draft tree"):
        bad.generate([1, 2], max_new_tokens=5)


def test_aux_rows_are_validated_even_without_nodes():
    from specdec import AuxTokens

    aux = AuxTokens(torch.tensor([VOCAB + 1]), torch.tensor([1]), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(DraftError, match="at aux row 0"):
        decoder(FixedDrafter(Draft(torch.empty(0, dtype=torch.long), (), aux=aux))).generate([1, 2])
    far = AuxTokens(torch.tensor([3]), torch.tensor([500]), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(DraftError, match="beyond the model's 64 positions"):
        decoder(FixedDrafter(Draft(torch.empty(0, dtype=torch.long), (), aux=far))).generate([1, 2])


def test_aux_rows_do_not_change_the_output_and_return_their_logits():
    """Aux rows ride along (lookahead's window): their logits equal a separate forward, the
    candidates' verification is unchanged, and they never enter the cache."""
    from specdec import AuxTokens, BaseDrafter

    seen = []

    class WithAux(BaseDrafter):
        def propose(self, context):
            guess = torch.tensor([context.tokens[-1], 5])
            # aux row 0 sees the root only; row 1 sees row 0: a two-token window after the root
            return Draft(torch.tensor([4]), (-1,),
                         aux=AuxTokens(guess, torch.tensor([1, 2]), torch.tensor([[0, 1, 0], [0, 1, 1]], dtype=torch.bool)))

        def observe(self, outcome):
            seen.append((list(outcome.tokens[:-1 - len(outcome.accepted_tokens)]), outcome.aux_logits))

    reference = decoder().generate([1, 2, 3], max_new_tokens=6)
    result = decoder(WithAux()).generate([1, 2, 3], max_new_tokens=6)
    assert result.tokens == reference.tokens
    committed, aux_logits = seen[0]
    root = committed[-1]
    with torch.inference_mode():
        expected = model()(torch.tensor([committed + [root, 5]])).logits[0, -2:]
    assert torch.allclose(aux_logits, expected, atol=1e-4)


def test_long_prompts_are_prefilled_causally_and_hidden_states_match_a_fresh_forward():
    """Prompts above the causal-prefill threshold take their own forward; drafters asking for
    hidden states still get the states of every committed position, in order."""
    target = tiny_llama(8, vocab_size=VOCAB, max_positions=512)
    collected = []

    class HiddenReader(DraftModelDrafter):
        hidden_state_layers = (-1, 1)

        def observe(self, outcome):
            collected.append(outcome.hidden_states)
            super().observe(outcome)

    prompt = [int(token) for token in torch.randint(0, VOCAB, (300,), generator=torch.Generator().manual_seed(1))]
    speculative = SpeculativeDecoder(HFVerifier(target, ()), HiddenReader(target, 3), RejectionSampling())
    result = speculative.generate(prompt, max_new_tokens=12)
    plain = SpeculativeDecoder(HFVerifier(target, ()), NoDrafter(), RejectionSampling())
    assert result.tokens == plain.generate(prompt, max_new_tokens=12).tokens
    committed = prompt + result.tokens
    with torch.inference_mode():
        fresh = target(torch.tensor([committed]), output_hidden_states=True).hidden_states
    for layer in (-1, 1):
        states = torch.cat([step[layer] for step in collected])
        assert torch.allclose(states, fresh[layer][0, : states.shape[0]], atol=1e-4)


def test_tiny_positive_temperatures_are_refused():
    with pytest.raises(ValueError, match="at least"):
        SamplingParams(temperature=1e-39)


class PaddedHead(torch.nn.Module):
    """An LM head whose last `padding` ids can never be produced, like a padded embedding matrix."""

    def __init__(self, head, padding):
        super().__init__()
        self.head, self.padding = head, padding
        self.weight = head.weight

    def forward(self, hidden):
        logits = self.head(hidden)
        logits[..., -self.padding:] = float("-inf")
        return logits


def test_a_narrower_draft_vocabulary_is_padded():
    """Families pad embeddings differently while sharing a tokenizer (Qwen 151936 vs 152064)."""
    target = tiny_llama(7, vocab_size=VOCAB)
    target.lm_head = PaddedHead(target.lm_head, 4)
    narrow = tiny_llama(9, vocab_size=VOCAB - 4)
    drafter = DraftModelDrafter(narrow, 3, target_vocab_size=VOCAB)
    padded = SpeculativeDecoder(HFVerifier(target, ()), drafter, RejectionSampling())
    result = padded.generate([1, 2], max_new_tokens=10, temperature=1.0, seed=0)
    assert len(result.tokens) == 10 and result.stats.draft_tokens > 0
    wider = tiny_llama(9, vocab_size=VOCAB + 4)
    with pytest.raises(ModelMismatchError, match="vocabulary"):
        DraftModelDrafter(wider, 3, target_vocab_size=VOCAB)
