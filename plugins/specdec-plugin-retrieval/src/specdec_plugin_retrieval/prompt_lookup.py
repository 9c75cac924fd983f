"""The `prompt_lookup` drafter (prompt lookup decoding, PLD).

Each step it looks for the longest trailing n-gram of the committed tokens (prompt and generated
text, n from `max_ngram` down to `min_ngram`) that occurred earlier, and proposes what followed
it. With `matcher="suffix_automaton"` the match is the longest repeated suffix of any length
(at least `min_ngram`), found by a suffix automaton (`suffix_automaton`), at its first occurrence,
plus the first occurrences of its shorter suffixes. With several earlier occurrences it merges their continuations into a trie: `selection`
orders alternatives by recency or by how many occurrences share them, `max_branches` bounds how
many distinct continuations the draft tree keeps (1 = a chain), and the cost model of
`adaptive` decides how much of that tree is worth verifying (possibly nothing).
"""

from __future__ import annotations

from typing import Literal, Sequence

from specdec import BaseDrafter, Draft, DraftContext, SamplingParams, StepOutcome
from specdec_plugin_retrieval.adaptive import AcceptanceModel, AdaptiveDrafting, CostModel, prior_table
from specdec_plugin_retrieval.candidates import trie_from_sequences
from specdec_plugin_retrieval.ngram_index import NgramIndex
from specdec_plugin_retrieval.suffix_automaton import SuffixAutomaton

#: The matchers `PromptLookupDrafter` can look up the trailing tokens with.
MATCHERS = ("ngram", "suffix_automaton")

_EMPTY = Draft.empty()

#: Longest context match measured behind an occurrence.
MAX_MATCH = 32
#: Match-length buckets of the acceptance model: 1, 2, 3-4, 5-8, 9-16, 17 and more tokens.
MATCH_EDGES = (1, 2, 3, 5, 9, 17)
#: Prior P(accepted | parent accepted) per match bucket: (depth 1, deeper), each by share bucket
#: (see `adaptive.SHARE_EDGES`). Measured with benchmarks/fit_priors.py on the self-distilled
#: answers of the shipped prompt set (about 20k depth-1 and 20k deeper trials), rounded, sparse
#: cells smoothed, capped at 0.95 so that a run of failures shows quickly.
PRIOR = (
    ((0.07, 0.13, 0.32, 0.6), (0.12, 0.22, 0.54, 0.88)),  # 1 (deeper nodes have matched >= 2)
    ((0.1, 0.24, 0.57, 0.9), (0.12, 0.22, 0.54, 0.88)),  # 2
    ((0.05, 0.24, 0.63, 0.85), (0.03, 0.25, 0.67, 0.95)),  # 3-4
    ((0.1, 0.3, 0.69, 0.95), (0.02, 0.24, 0.79, 0.95)),  # 5-8
    ((0.1, 0.36, 0.88, 0.95), (0.04, 0.29, 0.87, 0.95)),  # 9-16
    ((0.3, 0.53, 0.92, 0.95), (0.17, 0.5, 0.95, 0.95)),  # 17 and more
)


class PromptLookupDrafter(BaseDrafter):
    """Drafts continuations of earlier occurrences of the trailing n-gram.

    :param max_ngram: longest n-gram to match.
    :param min_ngram: shortest n-gram to match.
    :param num_tokens: deepest draft (continuation length).
    :param max_branches: most distinct continuations in one draft tree (1 = a chain).
    :param selection: "recent" prefers the continuation seen last, "frequent" the one most
        occurrences share (ties: the most recent).
    :param max_occurrences: most recent occurrences merged per lookup (bounds lookup cost).
    :param max_nodes: largest draft tree.
    :param adaptive: draft only what the cost model says pays; False drafts the best
        `max_branches` continuations in full whenever there is a match.
    :param cost: verification cost model of the target.
    :param min_gain: least expected speed gain (relative to a plain step) worth drafting for.
    :param matcher: "ngram" (the most recent occurrences of the longest n-gram up to `max_ngram`)
        or "suffix_automaton" (the longest repeated suffix, unbounded, at its first occurrence,
        then shorter suffixes; `max_ngram` does not apply).
    """

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1, num_tokens: int = 10,
                 max_branches: int = 1, selection: Literal["recent", "frequent"] = "recent",
                 max_occurrences: int = 16, max_nodes: int = 32, adaptive: bool = True,
                 cost: CostModel | None = None, min_gain: float = 0.0,
                 matcher: Literal["ngram", "suffix_automaton"] = "ngram"):
        if matcher not in MATCHERS:
            raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
        if selection not in ("recent", "frequent"):
            raise ValueError(f"selection must be 'recent' or 'frequent', got {selection!r}")
        if min(num_tokens, max_branches, max_occurrences, max_nodes) < 1:
            raise ValueError("num_tokens, max_branches, max_occurrences and max_nodes must be >= 1")
        self.index = NgramIndex(min_ngram, max_ngram) if matcher == "ngram" else SuffixAutomaton(min_ngram)
        self.num_tokens = num_tokens
        self.by_count = selection == "frequent"
        self.max_occurrences = max_occurrences
        self.drafting = AdaptiveDrafting(AcceptanceModel(MATCH_EDGES, prior_table(PRIOR)), cost=cost or CostModel(),
                                         max_nodes=max_nodes, max_leaves=max_branches, adaptive=adaptive,
                                         min_gain=min_gain)

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.index.reset()
        self.drafting.reset()  # learned acceptance carries over to the next generation

    def propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        self.index.sync(tokens)
        self.drafting.observe(tokens)
        depth = min(self.num_tokens, context.max_depth)
        # even a chain looks at several occurrences: how many agree tells how sure the draft is
        matched, positions = self.index.longest_match(self.max_occurrences)
        if not positions:
            return _EMPTY
        continuations = [self.index.continuation(position, depth) for position in positions]
        # the n-gram is where the lookup stopped; how far back each occurrence really matches
        # tells a quote being copied (long match) from a common phrase (short match)
        lengths = [self.index.matched_length(position, MAX_MATCH) for position in positions]
        tree = trie_from_sequences(continuations, lengths, by_count=self.by_count)
        return self.drafting.draft(tree, len(tokens), depth)

    def observe(self, outcome: StepOutcome) -> None:
        self.index.sync(outcome.tokens)
        self.drafting.observe(outcome.tokens)
