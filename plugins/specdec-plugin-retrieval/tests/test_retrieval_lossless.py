"""Both drafters, chains and trees, through specdec's losslessness harness.

The harness checks greedy identity (with cache checks) and the sampling distribution on seeded
tiny models. Each case also counts what was drafted, so that a drafter that never proposes
anything (which would pass trivially) fails here.
"""

import functools

import pytest
import torch

from specdec import BaseDrafter, FallbackDrafter, SamplingParams
from specdec.testing import (
    SAMPLING_CASES, TINY_TOKENIZER_VOCAB, assert_lossless, check_greedy_identity, check_sampling_distribution,
    tiny_llama)
from specdec_plugin_retrieval.adaptive import CostModel
from specdec_plugin_retrieval.corpus import build_from_corpus
from specdec_plugin_retrieval.prompt_lookup import PromptLookupDrafter
from specdec_plugin_retrieval.rest import RestDrafter


class Counting(BaseDrafter):
    """Passes drafts through, counting drafted nodes and tree-shaped drafts."""

    def __init__(self, inner, counts):
        self.inner, self.counts = inner, counts
        self.hidden_state_layers = inner.hidden_state_layers

    def start(self, prompt, params):
        self.inner.start(prompt, params)

    def propose(self, context):
        draft = self.inner.propose(context)
        self.counts["nodes"] += draft.num_nodes
        self.counts["trees"] += draft.num_nodes > 0 and not draft.is_chain
        return draft

    def observe(self, outcome):
        self.inner.observe(outcome)


def counted(make):
    counts = {"nodes": 0, "trees": 0}
    return (lambda target: Counting(make(), counts)), counts


# min_nodes: the adaptive drafters back off where the tiny random models reject their drafts,
# so they draft fewer nodes than the full one, but still hundreds over the run.
@pytest.mark.parametrize("params, sampling_cases, expect_trees, min_nodes", [
    # the default: an adaptive chain, every sampling case (the full check takes about a minute)
    pytest.param({}, SAMPLING_CASES, False, 1000, marks=pytest.mark.slow),
    pytest.param({"max_branches": 3, "selection": "frequent", "adaptive": False}, SAMPLING_CASES[::3], True, 1000,
                 marks=pytest.mark.slow),
    ({"max_branches": 4, "selection": "recent", "cost": CostModel(node_cost=0.02)}, SAMPLING_CASES[1:2], True,
     300),
], ids=["chain-adaptive", "tree-frequent-full", "tree-recent-adaptive"])
def test_prompt_lookup_is_lossless(params, sampling_cases, expect_trees, min_nodes):
    make, counts = counted(lambda: PromptLookupDrafter(**params))
    assert_lossless(make, num_samples=1000, sampling_cases=sampling_cases)
    assert counts["nodes"] > min_nodes
    assert bool(counts["trees"]) == expect_trees


def test_prompt_lookup_passes_the_quick_preset():
    make, counts = counted(lambda: PromptLookupDrafter())
    assert_lossless(make, quick=True)
    assert counts["nodes"] > 100


def test_prompt_lookup_with_the_suffix_automaton_is_lossless():
    make, counts = counted(lambda: PromptLookupDrafter(matcher="suffix_automaton", max_branches=3,
                                                       cost=CostModel(node_cost=0.02)))
    assert_lossless(make, num_samples=1000, sampling_cases=SAMPLING_CASES[:1])
    assert counts["nodes"] > 300 and counts["trees"] > 0


@functools.lru_cache(maxsize=None)
def tiny_rest_store(folder):
    """A store for the tiny tokenizer: synthetic text plus what the harness's tiny models write
    (decoded to text), so that lookups hit while the harness runs."""
    from specdec.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    texts = ["the cat sat on the mat. the cat ate the rat.", "hello there, how are you? i am fine."]
    for model in (tiny_llama(0, vocab_size=TINY_TOKENIZER_VOCAB), tiny_llama(0, vocab_size=TINY_TOKENIZER_VOCAB,
                                                                              init_std=0.1)):
        for prompt in ([1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(TINY_TOKENIZER_VOCAB - 1)) * 2, [9, 10]):
            with torch.inference_mode():
                ids = torch.tensor([prompt])
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40,
                                     pad_token_id=0)[0, len(prompt):].tolist()
            texts.append(tokenizer.decode([token for token in out if token >= 3]))
    corpus = folder / "corpus.jsonl"
    import json

    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return build_from_corpus([corpus], tokenizer, folder / "store")


@pytest.fixture(scope="module")
def rest_store(tmp_path_factory):
    return tiny_rest_store(tmp_path_factory.mktemp("rest"))


@pytest.mark.slow  # about a minute; test_adaptive_rest_and_the_fallback_combination_are_lossless is quick
def test_rest_trees_are_lossless(rest_store):
    make, counts = counted(lambda: RestDrafter(rest_store, max_nodes=8, adaptive=False))
    assert_lossless(make, vocab_size=TINY_TOKENIZER_VOCAB, num_samples=1000)
    assert counts["nodes"] > 1000 and counts["trees"] > 100


def test_adaptive_rest_and_the_fallback_combination_are_lossless(rest_store):
    target = tiny_llama(0, vocab_size=TINY_TOKENIZER_VOCAB, eos_token_id=TINY_TOKENIZER_VOCAB - 1)
    prompts = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], [9, 10, 9, 10, 9]]
    make_rest, rest_counts = counted(lambda: RestDrafter(rest_store))
    make_both, both_counts = counted(lambda: FallbackDrafter([PromptLookupDrafter(), RestDrafter(rest_store)]))
    for make in (make_rest, make_both):
        for max_new_tokens in (1, 5, 30):
            check_greedy_identity(make, target, prompts, max_new_tokens=max_new_tokens)
    sampling_target = tiny_llama(0, vocab_size=TINY_TOKENIZER_VOCAB, init_std=0.1)
    check_sampling_distribution(make_both, sampling_target, SamplingParams(temperature=0.8),
                                prompt=(9, 10, 9, 10), max_new_tokens=3, num_samples=1000)
    assert rest_counts["nodes"] > 0 and both_counts["nodes"] > 0
