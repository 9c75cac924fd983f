"""The benchmark's arithmetic on synthetic records: speedup, accepted tokens, acceptance, mismatches."""

import math

import pytest

from specdec_plugin_bench import metrics
from specdec_plugin_bench.metrics import (OVERALL, acceptance_by_position, annotate_mismatches, first_difference,
                                   mean_accepted_tokens, merge_counts, question_speeds, speedups_by_run,
                                   spread, steps_from_forwards, summarize)
from specdec import GenerationStats


def record(method, question, new_tokens, wall, *, steps=None, turn=1, num_turns=1, run=1, task="qa",
           output=None, **extra):
    return {"method": method, "question_id": question, "task": task, "turn": turn, "num_turns": num_turns,
            "run": run, "new_tokens": new_tokens, "steps": new_tokens if steps is None else steps,
            "wall_seconds": wall, "output_ids": list(range(new_tokens)) if output is None else output, **extra}


def test_speedup_is_the_ratio_of_mean_per_question_speeds_not_of_totals():
    # q1: AR 100 tok/s, method 200 tok/s; q2: AR 50 tok/s, method 50 tok/s
    ar = [record("ar", 1, 100, 1.0), record("ar", 2, 10, 0.2)]
    fast = [record("m", 1, 100, 0.5), record("m", 2, 10, 0.2)]
    assert speedups_by_run(fast, ar) == {1: pytest.approx((200 + 50) / 2 / ((100 + 50) / 2))}
    # a ratio of token totals over time totals would weigh q1 more: 110/0.7 vs 110/1.2
    assert speedups_by_run(fast, ar)[1] != pytest.approx((110 / 0.7) / (110 / 1.2))


def test_a_question_speed_sums_its_turns():
    records = [record("m", 1, 30, 1.0, turn=1, num_turns=2), record("m", 1, 10, 1.0, turn=2, num_turns=2)]
    assert question_speeds(records) == {(1, 1): pytest.approx(40 / 2.0)}


def test_incomplete_questions_are_left_out_and_runs_are_separate():
    ar = [record("ar", 1, 10, 1.0, run=1), record("ar", 1, 10, 0.5, run=2),
          record("ar", 2, 10, 1.0, turn=1, num_turns=2, run=2)]  # q2 lacks its turn 2
    method = [record("m", 1, 10, 0.5, run=1), record("m", 1, 10, 0.5, run=2),
              record("m", 2, 10, 1.0, turn=1, num_turns=2, run=2), record("m", 2, 5, 1.0, turn=2, num_turns=2, run=2)]
    assert set(question_speeds(ar)) == {(1, 1), (2, 1)}
    assert speedups_by_run(method, ar) == {1: pytest.approx(2.0), 2: pytest.approx(1.0)}


def test_spread_of_speedups_across_runs():
    value = spread([1.0, 1.5, 2.0])
    assert (value.mean, value.low, value.high, value.count) == (1.5, 1.0, 2.0, 3)
    assert value.std == pytest.approx(0.5)
    assert value.format(2, "x") == "1.50x (1.00-2.00)"
    assert spread([1.25]).format(2, "x") == "1.25x" and spread([1.25]).std == 0.0
    assert spread([]) is None


def test_mean_accepted_tokens_is_total_tokens_over_total_steps():
    records = [record("m", 1, 10, 1.0, steps=4), record("m", 2, 2, 1.0, steps=2)]
    assert mean_accepted_tokens(records) == pytest.approx(12 / 6)  # not the mean of 2.5 and 1.0
    assert mean_accepted_tokens([record("ar", 1, 7, 1.0)]) == 1.0
    assert mean_accepted_tokens([]) is None


def test_histograms_and_depth_counters_merge_elementwise():
    assert merge_counts([[1, 2], [0, 0, 5], None, []]) == [1, 2, 5]
    assert merge_counts([]) == []


def test_acceptance_by_position_pools_steps_like_generation_stats():
    first, second = GenerationStats(), GenerationStats()
    for stats, steps in ((first, [(3, 3), (3, 1)]), (second, [(2, 0), (3, 2), (1, 1)])):
        for depth, accepted in steps:
            stats.record_step(draft_tokens=depth, draft_depth=depth, accepted=accepted, new_tokens=accepted + 1)
    records = [{"drafted_at_depth": s.drafted_at_depth, "accepted_at_depth": s.accepted_at_depth}
               for s in (first, second)]
    assert acceptance_by_position(records) == pytest.approx(first.merge(second).acceptance_by_position)
    assert acceptance_by_position(records) == pytest.approx([4 / 5, 2 / 4, 1 / 3])
    assert acceptance_by_position([{"drafted_at_depth": None}]) == []


@pytest.mark.parametrize("output, reference, expected", [
    ([1, 2, 3], [1, 2, 3], None),
    ([1, 2, 3], [1, 9, 3], 1),
    ([5], [6], 0),
    ([1, 2], [1, 2, 3], 2),  # a prefix: differs where the shorter one ends
    ([1, 2, 3], [1, 2], 2),
    ([], [], None),
    ([], [4], 0),
])
def test_first_difference(output, reference, expected):
    assert first_difference(output, reference) == expected


def test_mismatches_are_found_per_question_turn_and_run():
    records = [
        record("ar", 1, 3, 1.0, output=[1, 2, 3], turn=1, num_turns=2),
        record("ar", 1, 2, 1.0, output=[7, 8], turn=2, num_turns=2),
        record("ar", 1, 3, 1.0, output=[1, 2, 3], turn=1, num_turns=2, run=2),
        record("m", 1, 3, 1.0, output=[1, 2, 4], turn=1, num_turns=2),  # differs at 2
        record("m", 1, 2, 1.0, output=[7, 8], turn=2, num_turns=2),  # equal, but its prompt differed
        record("m", 1, 3, 1.0, output=[1, 2, 3], turn=1, num_turns=2, run=2),
        record("m", 2, 1, 1.0, output=[5]),  # no AR record for question 2: not checked
    ]
    annotated = annotate_mismatches(records, "ar")
    by_key = {(r["method"], r["question_id"], r["turn"], r["run"]): r for r in annotated}
    assert by_key[("m", 1, 1, 1)]["matches_ar"] is False and by_key[("m", 1, 1, 1)]["first_difference"] == 2
    assert by_key[("m", 1, 2, 1)]["matches_ar"] is True and by_key[("m", 1, 2, 1)]["history_matches_ar"] is False
    assert by_key[("m", 1, 1, 2)]["matches_ar"] is True and by_key[("m", 1, 1, 2)]["history_matches_ar"] is True
    assert by_key[("m", 2, 1, 1)]["matches_ar"] is None
    assert by_key[("ar", 1, 1, 1)]["matches_ar"] is None  # the reference itself
    assert [(r["method"], r["question_id"], r["turn"]) for r in metrics.mismatches(annotated)] == [("m", 1, 1)]
    assert "matches_ar" not in records[0]  # the input is not modified


def test_sampled_runs_are_not_checked():
    records = [record("ar", 1, 2, 1.0, output=[1, 2]), record("m", 1, 2, 1.0, output=[3, 4])]
    annotated = annotate_mismatches(records, "ar", check=False)
    assert all(r["matches_ar"] is None for r in annotated) and not metrics.mismatches(annotated)


def test_steps_from_forwards_rebuilds_prompt_lookup_steps():
    # as recorded from model.generate(prompt_lookup_num_tokens=10) on a 42-token prompt, 10 new tokens:
    # the first forward carries the prompt and 10 candidates, a rejected draft is cropped from the cache
    forwards = [(52, 0), (1, 42), (1, 43), (11, 44), (1, 45), (1, 46), (1, 47), (11, 48), (7, 49)]
    steps = steps_from_forwards(forwards, prompt_length=42, new_tokens=10)
    assert steps == [(10, 1), (0, 1), (0, 1), (10, 1), (0, 1), (0, 1), (0, 1), (10, 1), (6, 2)]
    assert sum(committed for _, committed in steps) == 10


def test_steps_from_forwards_for_plain_and_fully_accepted_decoding():
    plain = [(5, 0)] + [(1, 5 + i) for i in range(3)]
    assert steps_from_forwards(plain, 5, 4) == [(0, 1)] * 4
    # an assistant whose 2-token drafts are always accepted: 3 tokens per step
    assisted = [(7, 0), (3, 7), (3, 10)]
    assert steps_from_forwards(assisted, 5, 9) == [(2, 3), (2, 3), (2, 3)]


def test_steps_from_forwards_refuses_what_does_not_add_up():
    assert steps_from_forwards([], 5, 0) is None
    assert steps_from_forwards([(5, None)], 5, 1) is None  # cache length unknown
    assert steps_from_forwards([(5, 0), (1, 9)], 5, 2) is None  # the cache cannot grow past the sequence
    assert steps_from_forwards([(3, 0)], 5, 1) is None  # fed less than the prompt


def test_summary_per_task_and_overall():
    records = [
        record("ar", 1, 10, 1.0, task="qa"), record("ar", 2, 10, 1.0, task="rag"),
        record("m", 1, 10, 0.5, steps=4, task="qa", draft_seconds=0.004,
               accepted_length_histogram=[1, 0, 3], drafted_at_depth=[4, 4], accepted_at_depth=[3, 3]),
        record("m", 2, 10, 1.0, steps=5, task="rag", draft_seconds=0.001,
               accepted_length_histogram=[2, 3], drafted_at_depth=[5, 5, 5], accepted_at_depth=[3]),
    ]
    annotated = annotate_mismatches(records, "ar")
    summary = summarize(annotated, ["ar", "m"], "ar", ["qa", "rag"])
    assert list(summary) == ["qa", "rag", OVERALL]
    assert summary["qa"]["m"].speedup.mean == pytest.approx(2.0)
    assert summary["rag"]["m"].speedup.mean == pytest.approx(1.0)
    assert summary[OVERALL]["m"].speedup.mean == pytest.approx((20 + 10) / 2 / 10)
    assert summary[OVERALL]["ar"].speedup.mean == pytest.approx(1.0)
    overall = summary[OVERALL]["m"]
    assert overall.mean_accepted_tokens == pytest.approx(20 / 9)
    assert overall.accepted_length_histogram == [3, 3, 3, 0]  # padded to the deepest draft (3)
    assert overall.acceptance_by_position == pytest.approx([6 / 9, 3 / 9, 0.0])
    assert overall.draft_ms_per_step == pytest.approx(1000 * 0.005 / 9)
    assert (overall.checked, overall.mismatches, overall.questions) == (2, 0, 2)
    assert summary[OVERALL]["ar"].draft_ms_per_step is None
    assert summary[OVERALL]["m"].to_dict()["speedup"]["runs"] == 1
    assert math.isclose(summary["qa"]["ar"].tokens_per_second.mean, 10.0)
