"""The `rest` drafter: retrieval-based speculative decoding (REST, He et al. 2023).

Each step it finds the longest tail of the committed tokens (`max_span` down to `min_span`
tokens) that occurs in the datastore, takes the continuations after (a bounded, evenly spread
sample of) its occurrences, merges them into a trie counting how many occurrences support each
node, and lets the cost model of `adaptive` choose which nodes to verify (siblings best first).
"""

from __future__ import annotations

from typing import Sequence

from specdec import BaseDrafter, Draft, DraftContext, SamplingParams, StepOutcome
from specdec_plugin_retrieval.adaptive import AcceptanceModel, AdaptiveDrafting, CostModel, prior_table
from specdec_plugin_retrieval.candidates import CandidateTree
from specdec_plugin_retrieval.store import Store
from specdec_plugin_retrieval.suffix_array import continuations, longest_suffix_match, trie_from_sorted_rows

_EMPTY = Draft.empty()

#: Matched-span buckets of the acceptance model: 2-3, 4-7, 8 and more tokens.
MATCH_EDGES = (2, 4, 8)
#: Prior P(accepted | parent accepted) per span bucket: (depth 1, deeper), each by share bucket
#: (see `adaptive.SHARE_EDGES`). Measured with benchmarks/fit_priors.py --folds 5 on the
#: self-distilled answers of the shipped prompt set (each answer drafted from a store without it).
PRIOR = (
    ((0.01, 0.13, 0.28, 0.65), (0.02, 0.14, 0.35, 0.48)),  # span 2-3
    ((0.02, 0.18, 0.51, 0.72), (0.02, 0.11, 0.5, 0.72)),  # span 4-7
    ((0.01, 0.32, 0.69, 0.9), (0.01, 0.22, 0.88, 0.92)),  # span >= 8
)

class RestDrafter(BaseDrafter):
    """Drafts token trees from a datastore of text (see `store`).

    :param store: an opened `Store` (built with the target's tokenizer).
    :param max_span: longest context tail looked up.
    :param min_span: shortest context tail looked up.
    :param num_tokens: deepest draft (continuation length).
    :param max_candidates: most occurrences whose continuations are merged per lookup.
    :param max_nodes: largest draft tree.
    :param max_branches: most root-to-leaf branches in a draft tree.
    :param adaptive: draft only what the cost model says pays; False drafts the `max_nodes` best
        supported nodes whenever there is a match.
    :param cost: verification cost model of the target.
    :param min_gain: least expected speed gain (relative to a plain step) worth drafting for.
    """

    def __init__(self, store: Store, max_span: int = 16, min_span: int = 2, num_tokens: int = 10,
                 max_candidates: int = 1000, max_nodes: int = 64, max_branches: int = 16,
                 adaptive: bool = True, cost: CostModel | None = None, min_gain: float = 0.0):
        if not 1 <= min_span <= max_span:
            raise ValueError(f"need 1 <= min_span <= max_span, got {min_span} and {max_span}")
        if min(num_tokens, max_candidates, max_nodes, max_branches) < 1:
            raise ValueError("num_tokens, max_candidates, max_nodes and max_branches must be >= 1")
        self.store = store
        self.max_span, self.min_span = max_span, min_span
        self.num_tokens = num_tokens
        self.max_candidates = max_candidates
        self.max_nodes = max_nodes
        self.drafting = AdaptiveDrafting(AcceptanceModel(MATCH_EDGES, prior_table(PRIOR)), cost=cost or CostModel(),
                                         max_nodes=max_nodes, max_leaves=max_branches, adaptive=adaptive,
                                         min_gain=min_gain)

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.drafting.reset()  # learned acceptance carries over to the next generation

    def candidates(self, tokens: Sequence[int], depth: int) -> CandidateTree | None:
        """The trie of continuations of the longest context tail found in the store."""
        store = self.store
        tail = tokens[max(len(tokens) - self.max_span, 0):]
        span, start, stop = longest_suffix_match(store.tokens, store.suffixes, tail, self.min_span, self.max_span)
        if not span:
            return None
        rows = continuations(store.tokens, store.suffixes, start, stop, span, depth, self.max_candidates,
                             store.separator)
        # a few times the draft budget leaves the cost model room to choose
        node_tokens, parents, counts = trie_from_sorted_rows(rows, 4 * self.max_nodes)
        if not node_tokens:
            return None
        return CandidateTree(tuple(node_tokens), tuple(parents), tuple(counts), rows.shape[0], (span,) * len(node_tokens))

    def propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        self.drafting.observe(tokens)
        depth = min(self.num_tokens, context.max_depth)
        tree = self.candidates(tokens, depth)
        if tree is None:
            return _EMPTY
        return self.drafting.draft(tree, len(tokens), depth)

    def observe(self, outcome: StepOutcome) -> None:
        self.drafting.observe(outcome.tokens)
