"""The metric conventions of `specdec.stats`: one definition, shared by `GenerationStats` and
every report that counts tokens and steps itself."""

from specdec import GenerationStats, mean_accepted_tokens, tokens_per_second


def test_mean_accepted_tokens_counts_the_targets_token_and_is_zero_without_steps():
    assert mean_accepted_tokens(10, 10) == 1.0  # plain decoding
    assert mean_accepted_tokens(11, 3) == 11 / 3
    assert mean_accepted_tokens(0, 0) == 0.0


def test_tokens_per_second_is_zero_without_measured_time():
    assert tokens_per_second(30, 1.5) == 20.0
    assert tokens_per_second(30, 0.0) == 0.0 and tokens_per_second(30, -1.0) == 0.0


def test_generation_stats_use_the_shared_definitions():
    stats = GenerationStats(steps=3, new_tokens=11, wall_seconds=2.0)
    assert stats.mean_accepted_tokens == mean_accepted_tokens(11, 3)
    assert stats.tokens_per_second == tokens_per_second(11, 2.0)
    assert GenerationStats().mean_accepted_tokens == 0.0 and GenerationStats().tokens_per_second == 0.0
