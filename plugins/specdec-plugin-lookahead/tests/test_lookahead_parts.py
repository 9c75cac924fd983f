"""The drafter's parts: the window's layout (against plain forwards of the target), its warm-up
and shift, the pool, the auto rule, and Jacobi's refinement."""

import pytest
import torch

from specdec import AuxTokens, CostModel, Draft, DraftContext, HFVerifier, SamplingParams, StepOutcome, TorchRandom
from specdec.testing import tiny_llama

from specdec_plugin_lookahead.auto import OnTopOf, WindowGain, choose_window, longest_match
from specdec_plugin_lookahead.drafter import JacobiDrafter, LookaheadDrafter
from specdec_plugin_lookahead.pool import TEXT, WINDOW, NGramPool
from specdec_plugin_lookahead.window import JacobiWindow, window_rows


def context(tokens, max_depth=8, max_nodes=None):
    return DraftContext(list(tokens), 1, SamplingParams(), max_depth, TorchRandom(0), 1, max_nodes=max_nodes)


def filled_window(width, ngram):
    """A window filled with distinct tokens, level by level (10, 11, ...)."""
    window = JacobiWindow(width, ngram)
    window.levels = [list(range(10, 10 + width - 1))]
    for level in range(1, ngram - 1):
        window.levels.append(list(range(10 * (level + 1), 10 * (level + 1) + width)))
    return window


def test_the_layout_is_the_reference_one():
    window = filled_window(3, 4)  # level 0: columns 1, 2; levels 1, 2: columns 0, 1, 2
    assert window.num_rows == window_rows(3, 4) == 2 + 2 * 3
    offsets, mask = window.layout()
    assert offsets.tolist() == [1, 2, 1, 2, 3, 2, 3, 4]
    seen = [sorted(torch.nonzero(row).flatten().tolist()) for row in mask]
    assert seen == [[0], [0, 1],  # level 0: causal
                    [2], [0, 3], [0, 1, 4],  # level 1, column i: level 0 up to column i, itself
                    [2, 5], [0, 3, 6], [0, 1, 4, 7]]  # level 2: ... and the same column on level 1


def test_every_aux_row_computes_the_target_at_its_chain():
    """Each window row's logits equal a plain forward of the target over the committed text and
    the row's chain (root, level 0 up to its column, its column on levels 1..l)."""
    torch.manual_seed(0)
    model = tiny_llama(0, vocab_size=16)
    prompt = [3, 5, 9, 1]
    window = JacobiWindow(3, 4)
    window.levels = [[4, 7], [2, 8, 6], [11, 1, 13]]
    offsets, among = window.layout()
    draft = Draft([12, 14], (-1, 0))  # a candidate too: the window must not see it
    attends = torch.cat([torch.zeros(window.num_rows, 2, dtype=torch.bool), among], dim=1)
    draft = Draft(draft.tokens, draft.parents, None,
                  AuxTokens(torch.tensor(window.tokens()), offsets, attends))
    verifier = HFVerifier(model, eos_token_ids=())
    verifier.start(prompt_length=len(prompt), max_new_tokens=8)
    output = verifier.verify(pending=prompt, draft=draft)
    assert output.aux_logits.shape == (window.num_rows, 16)
    chains = [[4], [4, 7], [2], [4, 8], [4, 7, 6], [2, 11], [4, 8, 1], [4, 7, 6, 13]]
    for row, chain in enumerate(chains):
        with torch.no_grad():
            plain = model(torch.tensor([prompt + chain])).logits[0, -1]
        assert torch.allclose(output.aux_logits[row], plain, atol=1e-4), f"aux row {row}"
    with torch.no_grad():  # and the candidates are unaffected by the window
        plain = model(torch.tensor([prompt + [12, 14]])).logits[0, -2:]
    assert torch.allclose(output.logits[1:], plain, atol=1e-4)


def test_the_window_warms_up_level_by_level_then_fills_the_pool_and_shifts():
    window = JacobiWindow(2, 4)
    window.reset([5, 6, 7])  # W + N - 3 guesses at level 0
    pool = NGramPool(cap=8)
    assert (window.columns, window.num_rows) == (4, 3)
    window.advance(root=1, outputs=[20, 21, 22], pool=pool)  # level 0's outputs become level 1
    assert window.levels == [[6, 7], [20, 21, 22]] and len(pool) == 0
    window.advance(root=2, outputs=[0, 0, 30, 31, 32], pool=pool)  # level 1's outputs, minus column 0
    assert window.levels == [[7], [21, 22], [31, 32]] and window.filled and len(pool) == 0
    assert window.num_rows == window_rows(2, 4)
    window.advance(root=3, outputs=[0, 0, 0, 40, 41], pool=pool)
    # column 0: root, level 1, level 2, output; column 1: level 0's token, ...
    assert pool.candidates(3, 5) == [((21, 31, 40), WINDOW)]
    assert pool.candidates(7, 5) == [((22, 32, 41), WINDOW)]
    assert window.levels == [[22], [31, 32], [40, 41]]
    with pytest.raises(ValueError, match="5 aux rows"):
        window.advance(root=3, outputs=[0], pool=pool)


def test_the_pool_keeps_the_newest_n_grams_per_key():
    pool = NGramPool(cap=2)
    pool.add(1, (2, 3), WINDOW)
    pool.add(1, (4, 5), WINDOW)
    pool.add(1, (2, 3), TEXT)  # again: moves to the newest end, source updated
    assert pool.candidates(1, 5) == [((2, 3), TEXT), ((4, 5), WINDOW)]
    pool.add(1, (6, 7), WINDOW)  # full: the oldest goes
    assert [ngram for ngram, _ in pool.candidates(1, 5)] == [(6, 7), (2, 3)]
    assert pool.candidates(1, 1) == [((6, 7), WINDOW)] and pool.candidates(9, 3) == []
    pool.add_text([1, 2, 3, 1, 2, 4], 3)
    assert [ngram for ngram, _ in pool.candidates(1, 5)] == [(2, 4), (2, 3)]
    assert pool.candidates(2, 5) == [((3, 1), TEXT)]
    assert [ngram for ngram, _ in pool.candidates(3, 5)] == [(1, 2)]


CPU = CostModel(curve=((1, 1.07), (2, 1.08), (3, 1.5), (4, 1.57), (8, 1.92), (16, 2.0), (32, 2.47), (64, 3.41)))
GPU = CostModel(curve=((1, 1.0), (8, 1.02), (16, 1.04), (32, 1.09), (64, 1.2), (128, 1.5)))


def test_auto_takes_the_largest_window_that_its_assumed_gain_pays_for():
    assert choose_window(CPU, "auto", "auto", 0.1) == (1, 4)  # two rows ride along for 8%
    width, ngram = choose_window(GPU, "auto", "auto", 0.1)  # 34 rows fit: W = 17, N = 3 makes 33
    assert (width, ngram) == (17, 3) and GPU.step_cost(window_rows(width, ngram)) - 1 <= 0.1
    assert choose_window(CPU, "auto", 3, 0.01) == (1, 3)  # nothing fits: the smallest window
    assert choose_window(CPU, 5, 4, 0.1) == (5, 4)  # given sizes are kept
    assert choose_window(GPU, 4, "auto", 0.1) == (4, 5)
    assert OnTopOf(CPU, 2).step_cost(1) == pytest.approx(1.5 / 1.08)


def test_the_window_pauses_when_it_brings_less_than_it_costs_and_is_probed_again():
    gain = WindowGain(overhead=0.5, depth=2, warmup=5, probe_every=5, probe_steps=2)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    for start in range(1, 6):  # the window's candidate is right once in five steps, text never
        assert gain.runs()
        gain.add(start, [(tokens[start], tokens[start + 1])] if start == 1 else [(0, 0)], [(0, 0)])
        gain.update(tokens[: start + 2])
    assert gain.mean == pytest.approx(sum(0.9 ** k for k in range(4, 5)) * 2 / sum(0.9 ** k for k in range(5)))
    assert not gain.runs()  # below its overhead after the warm-up: paused
    runs = [gain.runs() for _ in range(8)]
    assert runs == [False, False, False, False, True, True, False, False]  # a probe, still worse: paused again
    assert longest_match([(1, 2, 3), (1, 4)], (1, 2, 5)) == 2 and longest_match([], (1,)) == 0


def test_lookahead_drafts_the_pool_s_continuations_of_the_root_as_a_tree():
    drafter = LookaheadDrafter(window=2, ngram=3, guesses=3, pool_from_prompt=True)
    drafter.start([1, 2, 3, 1, 2, 4, 1, 5, 6], SamplingParams())
    draft = drafter.propose(context([1, 2, 3, 1, 2, 4, 1, 5, 6, 1]))
    # the prompt's 3-grams after 1, newest first: (5, 6), (2, 4), (2, 3): a trie of 5 nodes
    assert draft.tokens.tolist() == [5, 2, 6, 4, 3] and draft.parents == (-1, -1, 0, 1, 1)
    assert draft.num_aux == JacobiWindow(2, 3).initial_length  # the window starts at level 0
    assert not draft.aux.attends_to[:, :5].any()  # the window never sees the candidates
    assert drafter.propose(context([1, 2, 3, 1, 2, 4, 1, 5, 6, 1], max_depth=1)).max_depth == 1
    small = drafter.propose(context([1, 2, 3, 1, 2, 4, 1, 5, 6, 1], max_nodes=4))
    assert small.num_nodes + small.num_aux <= 4 and small.num_aux == 2  # the budget counts aux rows
    tiny = drafter.propose(context([1, 2, 3, 1, 2, 4, 1, 5, 6, 1], max_nodes=2))
    assert tiny.num_aux == 0 and tiny.num_nodes == 2  # no room for the window: candidates only


def test_observe_feeds_the_aux_logits_to_the_window_and_only_for_its_own_draft():
    drafter = LookaheadDrafter(window=2, ngram=3, guesses=2, pool_from_prompt=False)
    tokens = [1, 2, 3]
    drafter.start(tokens, SamplingParams())
    draft = drafter.propose(context(tokens))
    assert draft.num_nodes == 0 and draft.num_aux == 2
    logits = torch.zeros(2, 16)
    logits[0, 7] = logits[1, 8] = 1.0
    other = Draft.empty()
    drafter.observe(StepOutcome(other, (), (), 4, tokens + [4], aux_logits=logits))
    assert len(drafter.window.levels) == 1  # another drafter's draft: nothing learned
    draft = drafter.propose(context(tokens + [4]))
    drafter.observe(StepOutcome(draft, (), (), 5, tokens + [4, 5], aux_logits=logits))
    assert drafter.window.levels[1] == [7, 8] and drafter.window.filled  # warm-up done in one step
    draft = drafter.propose(context(tokens + [4, 5]))
    assert draft.num_aux == 3
    logits = torch.zeros(3, 16)
    logits[:, 9] = 1.0
    drafter.observe(StepOutcome(draft, (), (), 6, tokens + [4, 5, 6], aux_logits=logits))
    assert drafter.pool.candidates(5, 4) == [((7, 9), WINDOW)]  # column 0: root 5, level 1, output
    assert len(drafter.pool) == 2


def test_jacobi_refines_the_guesses_after_the_accepted_ones():
    drafter = JacobiDrafter(window=4)
    tokens = [1, 2, 3]
    draft = drafter.propose(context(tokens))
    assert draft.num_nodes == 4 and draft.is_chain and drafter.wants_logits
    guesses = draft.tokens.tolist()
    logits = torch.zeros(5, 16)
    for row, best in enumerate([guesses[0], 9, 10, 11, 12]):
        logits[row, best] = 1.0
    # node 0 accepted, node 1 rejected (the target's token there is 9)
    drafter.observe(StepOutcome(draft, (0,), (guesses[0],), 9, tokens + [guesses[0], 9], logits=logits))
    assert drafter.guesses == [10, 11, 12]  # rows 2..4: the iterates for the positions after 9
    draft = drafter.propose(context(tokens + [guesses[0], 9], max_depth=2))
    assert draft.tokens.tolist() == [10, 11]
    drafter.observe(StepOutcome(Draft.empty(), (), (), 4, tokens + [guesses[0], 9, 4]))  # not ours: shift
    assert drafter.guesses[:2] == [11, 12]


def test_jacobi_auto_drafts_only_what_pays():
    cheap = JacobiDrafter("auto", cost=CostModel(node_cost=0.01))
    assert cheap.propose(context([1, 2, 3])).num_nodes > 0
    dear = JacobiDrafter("auto", cost=CostModel(node_cost=1.0))
    assert dear.propose(context([1, 2, 3])).num_nodes == 0
