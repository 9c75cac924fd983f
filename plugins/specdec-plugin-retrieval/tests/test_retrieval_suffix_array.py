"""Suffix array construction, range search and continuation tries against naive references."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from specdec_plugin_retrieval.suffix_array import (
    continuations, find_range, longest_suffix_match, suffix_array, trie_from_sorted_rows)

SEP = 9
token_arrays = st.lists(st.integers(0, 3), max_size=80).map(lambda values: np.array(values, dtype=np.uint16))


def naive_suffix_array(tokens):
    values = tokens.tolist()
    return sorted(range(len(values)), key=lambda start: values[start:])


@given(token_arrays)
def test_suffix_array_equals_a_naive_sort(tokens):
    assert suffix_array(tokens).tolist() == naive_suffix_array(tokens)


def test_suffix_array_of_long_repeats_and_wide_ids():
    rng = np.random.default_rng(0)
    tokens = np.concatenate([np.tile([5, 6, 7], 300), rng.integers(0, 70_000, 500)]).astype(np.uint32)
    assert suffix_array(tokens).tolist() == naive_suffix_array(tokens)
    assert suffix_array(np.zeros(0, dtype=np.uint16)).shape == (0,)


@given(token_arrays, st.lists(st.integers(0, 3), min_size=1, max_size=4))
def test_find_range_lists_exactly_the_occurrences(tokens, query):
    suffixes = suffix_array(tokens)
    start, stop = find_range(tokens, suffixes, query)
    values = tokens.tolist()
    found = sorted(int(position) for position in suffixes[start:stop])
    assert found == [i for i in range(len(values)) if values[i:i + len(query)] == query]


@given(token_arrays, st.lists(st.integers(0, 3), min_size=1, max_size=10), st.integers(1, 3))
def test_longest_suffix_match_finds_the_longest_tail(tokens, context, min_span):
    suffixes = suffix_array(tokens)
    span, start, stop = longest_suffix_match(tokens, suffixes, context, min_span, 6)
    values = tokens.tolist()

    def occurs(tail):
        return any(values[i:i + len(tail)] == tail for i in range(len(values)))

    expected = max((s for s in range(min_span, min(6, len(context)) + 1) if occurs(context[-s:])), default=0)
    assert span == expected
    if span:
        assert {int(p) for p in suffixes[start:stop]} == \
            {i for i in range(len(values)) if values[i:i + span] == context[-span:]}


def naive_trie_counts(rows):
    """{path prefix: number of rows starting with it}, ignoring -1 padding."""
    counts = {}
    for row in rows:
        prefix = ()
        for token in row:
            if token < 0:
                break
            prefix += (token,)
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts


@given(st.lists(st.integers(0, 3), max_size=120), st.lists(st.integers(0, 3), min_size=1, max_size=3),
       st.integers(1, 5), st.integers(1, 40))
def test_continuations_stop_at_separators_and_merge_into_a_trie(values, query, length, max_count):
    # documents separated by SEP, as in a store
    tokens = np.array([SEP if i % 17 == 16 else value for i, value in enumerate(values)], dtype=np.uint16)
    suffixes = suffix_array(tokens)
    start, stop = find_range(tokens, suffixes, query)
    rows = continuations(tokens, suffixes, start, stop, len(query), length, max_count, SEP)
    assert rows.shape == (min(stop - start, max_count), length)
    for row, position in zip(rows.tolist(), (suffixes[start:stop] if stop - start <= max_count else [None] * len(rows))):
        if position is None:
            break
        expected = []
        for index in range(int(position) + len(query), int(position) + len(query) + length):
            if index >= len(tokens) or tokens[index] == SEP:
                break
            expected.append(int(tokens[index]))
        assert row == expected + [-1] * (length - len(expected))
    trie_tokens, parents, counts = trie_from_sorted_rows(rows, 10_000)
    paths = {}
    for node, (token, parent) in enumerate(zip(trie_tokens, parents)):
        assert parent < node
        paths[node] = (paths[parent] if parent >= 0 else ()) + (token,)
    assert {paths[node]: counts[node] for node in paths} == naive_trie_counts(rows.tolist())
    siblings = {}
    for node, parent in enumerate(parents):
        siblings.setdefault(parent, []).append(counts[node])
    assert all(group == sorted(group, reverse=True) for group in siblings.values())  # best first
    # a smaller budget keeps the best supported nodes, parents included
    budget = max(len(trie_tokens) // 2, 1)
    small_tokens, small_parents, small_counts = trie_from_sorted_rows(rows, budget)
    assert len(small_tokens) == min(budget, len(trie_tokens))
    if small_counts:
        assert min(small_counts) >= sorted(counts, reverse=True)[len(small_counts) - 1]
