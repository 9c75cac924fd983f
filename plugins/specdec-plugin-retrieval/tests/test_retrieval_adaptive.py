"""Adaptive drafting on replayed greedy generations: no slower than plain decoding when nothing
can be copied, long drafts when the output copies the prompt."""

import random

from specdec_plugin_retrieval.adaptive import CostModel
from specdec_plugin_retrieval.prompt_lookup import PromptLookupDrafter
from specdec.testing import replay_greedy

COST = CostModel(node_cost=0.08)


def noise(seed, size, vocab=40):
    generator = random.Random(seed)
    return [generator.randrange(vocab) for _ in range(size)]


def test_nothing_to_copy_costs_next_to_nothing():
    # a small vocabulary makes n-gram matches frequent, but their continuations are noise
    prompt, output = noise(0, 300), noise(1, 400)
    adaptive = replay_greedy(PromptLookupDrafter(), prompt, output, COST)
    always = replay_greedy(PromptLookupDrafter(adaptive=False), prompt, output, COST)
    assert always.modeled_speedup < 0.75  # drafting every match would be much slower than plain
    assert adaptive.modeled_speedup > 0.97
    assert adaptive.drafted_steps < 0.25 * adaptive.steps < always.drafted_steps  # it learned to stay quiet


def test_copying_the_prompt_drafts_long_chains_and_resumes_after_noise():
    prompt = noise(2, 300, vocab=5000)
    # the answer alternates noise with quotes of the prompt
    output = noise(3, 150, vocab=5000) + prompt[40:140] + noise(4, 150, vocab=5000) + prompt[150:250]
    stats = replay_greedy(PromptLookupDrafter(), prompt, output, COST)
    # one step per noise token (300), and each quote of 100 tokens in about ten steps
    assert stats.steps < 300 + 30 and stats.modeled_speedup > 1.4
    # a quote alone: nearly every step accepts a whole draft of 10 and the target's token
    quote = replay_greedy(PromptLookupDrafter(), prompt, prompt[40:240], COST)
    assert quote.mean_accepted_tokens > 9
