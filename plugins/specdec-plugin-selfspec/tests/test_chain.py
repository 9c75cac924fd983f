"""The chain sizer: chains as long as the cost curve and the learned acceptance make worthwhile."""

import pytest

from specdec import CostModel

from specdec_plugin_selfspec.chain import (CONFIDENCE_EDGES, EXPLORE_EVERY, MAX_EXPLORE_EVERY, ChainSizer,
                                          confidence_bucket)

# a CPU-like curve: one or two draft tokens nearly free, the third expensive, later ones cheap
CPU_CURVE = CostModel(curve=((1, 1.05), (2, 1.1), (3, 1.5), (4, 1.55), (8, 1.9)))


def test_confidence_buckets_cover_zero_to_one():
    assert confidence_bucket(0.0) == 0 and confidence_bucket(0.999) == len(CONFIDENCE_EDGES)
    assert [confidence_bucket(edge) for edge in CONFIDENCE_EDGES] == list(range(1, len(CONFIDENCE_EDGES) + 1))


def test_keep_takes_the_prefix_with_the_best_ratio_spent_drafting_included():
    sizer = ChainSizer(CPU_CURVE, 8, draft_cost=0.3)
    # three likely tokens: the third costs 0.4 plain steps of verification for 0.7 expected tokens
    assert sizer.keep([0.9, 0.8, 0.7], 3) == 3
    assert sizer.keep([0.9, 0.8, 0.1], 3) == 2  # a third token unlikely to be accepted is not verified
    assert sizer.keep([0.02], 1) == 0  # not worth its share of the verification: a plain step


def test_keep_drafting_looks_past_the_expensive_third_token():
    sizer = ChainSizer(CPU_CURVE, 8, draft_cost=0.05)
    chances = [0.98, 0.96]
    assert sizer.keep_drafting(chances, 2, 8)  # the curve flattens after 3: 4+ tokens pay
    costly = ChainSizer(CPU_CURVE, 8, draft_cost=0.6)
    assert not costly.keep_drafting([0.6, 0.36], 2, 8)
    assert not sizer.keep_drafting(chances, 2, 2)  # the limit


def test_acceptance_by_confidence_is_learned_from_what_was_committed():
    sizer = ChainSizer(CPU_CURVE, 4, draft_cost=0.3)
    sure, unsure = 0.99, 0.35
    before = sizer.rate(sure), sizer.rate(unsure)
    tokens = list(range(10))
    for step in range(30):  # confident drafts are always right, unsure ones always wrong
        sizer.proposed(len(tokens), [7, 8], [sure, unsure])
        tokens += [7, 9]
        sizer.observed(tokens)
    assert sizer.rate(sure) > before[0] and sizer.rate(sure) > 0.99
    assert sizer.rate(unsure) < before[1] and sizer.rate(unsure) < 0.1
    assert sizer.first_token_rate.value == pytest.approx(1.0)


def test_drafting_stops_being_worth_it_when_first_tokens_are_rejected_and_cost_is_measured(monkeypatch):
    import specdec_plugin_selfspec.chain as chain

    clock = iter([10.0, 10.11])  # handed over at 10.0, outcome at 10.11: 0.11 s for 2 nodes
    monkeypatch.setattr(chain.time, "perf_counter", lambda: next(clock))
    sizer = ChainSizer(CPU_CURVE, 4)  # draft cost measured: a forward's time over a plain step's
    assert sizer.draft_cost == sizer.initial_draft_cost  # nothing measured yet
    sizer.time_forward(0.04)
    sizer.handed_over(2)
    sizer.observed([])
    assert sizer.step_seconds.value == pytest.approx(0.1)  # 0.11 s / cost curve at 2 nodes (1.1)
    assert sizer.draft_cost == pytest.approx(0.4)
    assert sizer.worth_drafting()
    tokens = list(range(5))
    for _ in range(40):
        sizer.proposed(len(tokens), [3], [0.9])
        tokens.append(4)
        sizer.observed(tokens)
    assert sizer.first_token_rate.value < 0.05 and not sizer.worth_drafting()


def drafting_steps(sizer: ChainSizer, steps: int) -> list[int]:
    return [step for step in range(1, steps + 1) if sizer.should_draft()]


def test_a_draft_forward_dearer_than_a_plain_step_backs_exploration_off():
    """No chain beats a plain step when one draft forward costs a plain step or more (a GPU's eager
    drafter against a target replaying CUDA graphs): each exploration doubles the gap to the next."""
    sizer = ChainSizer(CPU_CURVE, 4, draft_cost=2.0)
    sizer.first_token_rate.add(1.0)  # even every first token accepted does not pay
    assert not sizer.worth_drafting()
    steps = drafting_steps(sizer, 2000)
    gaps = [later - earlier for earlier, later in zip(steps, steps[1:])]
    assert steps[0] == EXPLORE_EVERY
    assert gaps[:5] == [16, 32, 64, 128, 256] and set(gaps[5:]) == {MAX_EXPLORE_EVERY}


def test_exploration_stays_frequent_while_a_draft_forward_is_cheap():
    """A cheap drafter that does not pay now (its first tokens are rejected) may pay again soon."""
    sizer = ChainSizer(CPU_CURVE, 4, draft_cost=0.3)
    sizer.first_token_rate.add(0.0)
    assert not sizer.worth_drafting()
    steps = drafting_steps(sizer, 200)
    assert {later - earlier for earlier, later in zip(steps, steps[1:])} == {EXPLORE_EVERY}


def test_drafting_that_pays_again_drafts_every_step_and_resets_the_backoff():
    sizer = ChainSizer(CPU_CURVE, 4, draft_cost=2.0)
    sizer.first_token_rate.add(1.0)
    drafting_steps(sizer, 500)
    assert sizer.explore_every == MAX_EXPLORE_EVERY
    sizer.fixed_draft_cost = 0.1  # the drafter got cheap (measured: `draft_cost` follows its timings)
    assert drafting_steps(sizer, 10) == list(range(1, 11))
    assert sizer.explore_every == EXPLORE_EVERY


def test_a_drafter_that_got_cheap_but_does_not_pay_explores_often_again():
    """An exploration that measures a draft forward below a plain step ends the backoff at once,
    even when drafting still does not pay (its first tokens are rejected)."""
    sizer = ChainSizer(CPU_CURVE, 4, draft_cost=2.0)
    sizer.first_token_rate.add(1.0)
    drafting_steps(sizer, 500)
    sizer.fixed_draft_cost = 0.3
    sizer.first_token_rate.value = 0.0
    assert not sizer.worth_drafting()
    steps = drafting_steps(sizer, 100)
    assert steps[0] <= EXPLORE_EVERY and {later - earlier for earlier, later in zip(steps, steps[1:])} == {EXPLORE_EVERY}
