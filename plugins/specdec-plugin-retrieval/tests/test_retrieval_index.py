"""The n-gram index, candidate tries, node selection and the online acceptance model."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specdec_plugin_retrieval.adaptive import (
    AcceptanceModel, OutcomeTracker, prior_table, score)
from specdec_plugin_retrieval.candidates import CandidateTree, trie_from_sequences
from specdec_plugin_retrieval.ngram_index import NgramIndex


def rescan(tokens, n):
    """Positions after each earlier occurrence of the last n tokens, ascending (the reference)."""
    if n > len(tokens):
        return []
    tail = tokens[len(tokens) - n:]
    return [end for end in range(n, len(tokens)) if tokens[end - n:end] == tail]


streams = st.lists(st.integers(0, 3), max_size=60)  # a small alphabet makes many repeats
chunkings = st.lists(st.integers(1, 7), min_size=1, max_size=30)


@given(streams, chunkings, st.integers(1, 3), st.integers(0, 3))
def test_incremental_index_equals_a_rescan(tokens, chunks, min_n, extra):
    index = NgramIndex(min_n, min_n + extra)
    seen = 0
    for size in chunks + [len(tokens)]:  # grow in uneven steps, as steps commit 1..k tokens
        seen = min(seen + size, len(tokens))
        index.sync(tokens[:seen])
        prefix = tokens[:seen]
        for n in range(min_n, min_n + extra + 1):
            assert index.occurrences(n, 10_000) == rescan(prefix, n)[::-1]
            assert index.occurrences(n, 2) == rescan(prefix, n)[::-1][:2]
        expected = next(((n, rescan(prefix, n)[::-1]) for n in range(min_n + extra, min_n - 1, -1)
                         if rescan(prefix, n)), (0, []))
        assert index.longest_match(10_000) == expected


def test_sync_reindexes_a_sequence_that_does_not_extend_the_old_one():
    index = NgramIndex(1, 2)
    index.sync([1, 2, 3, 1, 2])
    index.sync([5, 6, 5])
    assert index.tokens == [5, 6, 5] and index.occurrences(1, 10) == [1]


def test_matched_length_measures_the_whole_match_behind_an_occurrence():
    index = NgramIndex(1, 2)
    index.sync([5, 1, 2, 3, 9, 1, 2, 3])
    assert index.occurrences(2, 10) == [4]  # after "2 3" at positions 2-3
    assert index.matched_length(4, 32) == 3 and index.matched_length(4, 2) == 2
    assert index.matched_length(1, 32) == 0


def test_continuation_copies_and_keeps_a_loop_going():
    index = NgramIndex(1, 2)
    index.sync([7, 1, 2, 3, 1, 2])
    assert index.continuation(1, 3) == [1, 2, 3]
    # past the end, the copy continues with its own output: a loop of period end - position
    assert index.continuation(4, 7) == [1, 2, 1, 2, 1, 2, 1]
    assert index.continuation(3, 7) == [3, 1, 2, 3, 1, 2, 3]


def test_trie_merges_shared_prefixes_and_orders_siblings():
    sequences = [[1, 2, 3], [4, 5], [1, 2, 9], [4, 6], [4, 5]]
    by_count = trie_from_sequences(sequences, [2, 5, 3, 1, 1], by_count=True)
    assert by_count.tokens[:2] == (4, 1)  # 4 starts three continuations, 1 two
    assert by_count.counts[:2] == (3, 2) and by_count.root_count == 5
    assert by_count.matched[:2] == (5, 3)  # the longest match among a node's occurrences
    recent = trie_from_sequences(sequences, [2, 5, 3, 1, 1], by_count=False)
    assert recent.tokens[:2] == (1, 4)  # first appearance first
    for tree in (by_count, recent):
        paths = set()
        for leaf in range(tree.num_nodes):
            if not tree.children[leaf + 1]:
                path, node = [], leaf
                while node >= 0:
                    path.append(tree.tokens[node])
                    node = tree.parents[node]
                paths.add(tuple(path[::-1]))
        assert paths == {(1, 2, 3), (1, 2, 9), (4, 5), (4, 6)}
        assert all(parent < node for node, parent in enumerate(tree.parents))


def chain_and_fork():
    # 1 -> 2 -> 3 and 1 -> 4; and a second root child 5
    return CandidateTree(tokens=(1, 5, 2, 4, 3), parents=(-1, -1, 0, 0, 2), counts=(5, 1, 4, 1, 4),
                         root_count=6, matched=(3,) * 5)


def test_a_selection_of_nodes_becomes_a_draft():
    tree = chain_and_fork()
    draft = tree.draft([0, 2, 4, 3])
    assert draft.tokens.tolist() == [1, 2, 3, 4] and draft.parents == (-1, 0, 1, 0)
    assert tree.draft([]).num_nodes == 0


def test_acceptance_model_learns_from_what_was_committed():
    edges = (1, 2, 3)
    model = AcceptanceModel(edges, prior_table([((0.5,) * 4, (0.5,) * 4)] * len(edges)), prior_weight=2.0)
    tree = trie_from_sequences([[1, 2, 3]], [3], by_count=False)
    cells, probabilities = score(tree, model)
    assert probabilities == pytest.approx([0.5, 0.25, 0.125])
    tracker = OutcomeTracker(model)
    for start in range(0, 40, 4):  # the committed text always continues 1, 2, then 9
        tracker.add(start, tree, cells)
        tracker.update([0] * start + [1, 2, 9, 0])
    assert not tracker.pending
    first, second, third = (model.probability(cell) for cell in cells)
    assert first > 0.9
    assert cells[1] == cells[2] and 0.3 < second < 0.7  # depths 2 and 3 share a cell: 2 hits, 9 misses


def test_tracker_waits_for_tokens_and_drops_resolved_trees():
    edges = (1,)
    model = AcceptanceModel(edges, prior_table([((0.5,) * 4, (0.5,) * 4)] * len(edges)))
    tree = trie_from_sequences([[4, 5], [4, 6], [4, 6]], [1, 1, 1], by_count=True)
    cells, _ = score(tree, model)
    assert tree.tokens == (4, 6, 5) and cells[1] != cells[2]  # shares 2/4 and 1/4
    tracker = OutcomeTracker(model)
    tracker.add(2, tree, cells)
    tracker.update([0, 0, 4])  # root child 4 matched; its children wait for the next token
    assert len(tracker.pending) == 1 and model.trials[cells[0]] == 1
    tracker.update([0, 0, 4, 6])
    assert not tracker.pending
    assert model.successes[cells[1]] == 1 and model.trials[cells[2]] == 1 and not model.successes[cells[2]]
