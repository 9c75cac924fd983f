"""The suffix automaton matcher: the longest earlier match of the sequence's suffix, checked
against a rescan, and the prompt lookup drafter built on it."""

from hypothesis import given
from hypothesis import strategies as st

from specdec_plugin_retrieval.prompt_lookup import PromptLookupDrafter
from specdec_plugin_retrieval.suffix_automaton import SuffixAutomaton


def longest_earlier_match(tokens):
    """(length, position right after its first occurrence) of the longest suffix of `tokens` that
    also ends before the last token, by rescanning (the reference)."""
    best = (0, None)
    for length in range(1, len(tokens)):
        tail = tokens[len(tokens) - length:]
        ends = [end for end in range(length, len(tokens)) if tokens[end - length:end] == tail]
        if not ends:
            break
        best = (length, ends[0])
    return best


def assert_match_state_is_valid(automaton):
    """The match (state, length) is a string of its state's class: longer than the class's suffix
    link, at most the class's longest string."""
    state, length = automaton._match_state, automaton.match_length
    if state:
        assert automaton._length[automaton._link[state]] < length <= automaton._length[state]
    else:
        assert length == 0


streams = st.lists(st.integers(0, 3), max_size=80)  # a small alphabet makes many repeats and clones
chunkings = st.lists(st.integers(1, 7), min_size=1, max_size=30)


@given(streams, chunkings)
def test_the_match_equals_a_rescan_after_every_step(tokens, chunks):
    automaton = SuffixAutomaton()
    seen = 0
    for size in chunks + [len(tokens)]:  # grow in uneven steps, as decoding steps commit 1..k tokens
        seen = min(seen + size, len(tokens))
        automaton.sync(tokens[:seen])
        prefix = tokens[:seen]
        length, position = longest_earlier_match(prefix)
        assert automaton.match_length == length
        assert_match_state_is_valid(automaton)
        found = automaton.occurrences(1000)
        assert (found[0] if found else (0, None)) == (length, position)
        # every further candidate is a shorter suffix, really matched at its own first occurrence
        lengths = [match for match, _ in found]
        assert lengths == sorted(lengths, reverse=True) and len({at for _, at in found}) == len(found)
        for match, at in found:
            assert prefix[at - match:at] == prefix[len(prefix) - match:] and at < len(prefix)
    assert automaton.num_states <= max(1, 2 * len(tokens))  # the automaton is linear in size


def test_a_split_class_moves_the_match_to_the_clone():
    # appending the second 1 splits the class {"1", "0 1"}: the match "1" is the clone's now
    automaton = SuffixAutomaton()
    automaton.sync([0, 1, 1])
    assert automaton.occurrences(10) == [(1, 2)]
    assert_match_state_is_valid(automaton)
    automaton.sync([0, 1, 1, 1])
    assert automaton.occurrences(10) == [(2, 3), (1, 2)]


def test_min_n_hides_short_matches_and_sync_reindexes_a_new_sequence():
    automaton = SuffixAutomaton(min_n=2)
    automaton.sync([5, 6, 7, 5, 6])
    assert automaton.longest_match(10) == (2, [2])
    automaton.sync([5, 6, 7, 5, 6, 9, 5])
    assert automaton.longest_match(10) == (0, [])  # "5" matches, but only 1 token
    automaton.sync([1, 2, 1])  # not an extension: start over
    assert automaton.tokens == [1, 2, 1] and automaton.match_length == 1


def test_the_first_occurrence_of_the_longest_match_is_drafted():
    # "1 2 3" occurs twice before the end with different continuations; the n-gram matcher (up to
    # 2-grams) copies the most recent "2 3", the automaton the first occurrence of "1 2 3"
    tokens = [1, 2, 3, 4, 4, 9, 2, 3, 8, 8, 1, 2, 3]
    automaton = SuffixAutomaton()
    automaton.sync(tokens)
    assert automaton.longest_match(1) == (3, [3])
    assert automaton.continuation(3, 3) == [4, 4, 9]
    from specdec import DraftContext, SamplingParams, TorchRandom

    def first_draft(matcher):
        drafter = PromptLookupDrafter(max_ngram=2, num_tokens=3, adaptive=False, matcher=matcher)
        drafter.start(tokens, SamplingParams())
        context = DraftContext(tokens, len(tokens), SamplingParams(), 3, TorchRandom(0), 0)
        return drafter.propose(context).tokens.tolist()

    assert first_draft("suffix_automaton") == [4, 4, 9]
    assert first_draft("ngram") == [8, 8, 1]
