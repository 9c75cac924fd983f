"""The `lookahead` drafter (lookahead decoding, Fu et al. 2024) and its `mode: jacobi`.

Lookahead, one step:

1. the draft's aux rows are the Jacobi window (`window.JacobiWindow`): W columns, N-1 levels,
   seeing the committed text but not the candidates;
2. its nodes are up to G continuations of the root from the n-gram pool (`pool.NGramPool`),
   merged into a trie (shared prefixes share nodes, parents before children);
3. after verification the window takes the target's argmax at its last level
   (`StepOutcome.aux_logits`), adds one N-gram per column to the pool and shifts by one.

With `pool_from_prompt` the pool also holds the prompt's N-grams and those of the text
generated so far. Jacobi (`JacobiDrafter`): the draft is a chain of W guesses after the root;
after verification the guesses after the accepted ones are replaced by the target's argmax at
their rows (`wants_logits`), which is one Jacobi iteration, so a window that has converged is
accepted whole.

Every candidate is a point mass (q is None): `rejection` accepts it with the target's
probability, so the output is distributed as plain sampling at any temperature and equals plain
greedy decoding at temperature 0. How candidates and the window are chosen never changes that.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from specdec import (AcceptanceTracker, AuxTokens, BaseDrafter, CostModel, Draft, DraftContext, SamplingParams,
                     SlotAcceptance, StepOutcome, breadth_first, merge_sequences, path_probabilities, select_nodes,
                     subtree_parents, tree_depths)

from specdec_plugin_lookahead.auto import OnTopOf, WindowGain, choose_window
from specdec_plugin_lookahead.pool import TEXT, WINDOW, NGramPool
from specdec_plugin_lookahead.window import JacobiWindow, window_rows

_EMPTY = Draft.empty()
#: Prior P(a candidate node is accepted | its parent was), for the first token of a candidate and
#: for later ones, by source (window trajectories, then text n-grams). Learned online; the prior
#: weighs as 4 trials.
PRIOR = {WINDOW: (0.1, 0.4), TEXT: (0.3, 0.6)}
#: Siblings exclude each other: their estimated chances are scaled to sum to at most this.
MAX_SIBLING_SUM = 0.99
#: `guesses: auto`: most n-grams per key and per step, at least this many (else W).
AUTO_MIN_GUESSES = 4
#: `mode: jacobi, window: auto`: the longest chain considered, and the prior acceptance of its
#: first guess and of each later one given the previous.
JACOBI_AUTO_WIDTH = 8
JACOBI_PRIOR = (0.15, 0.4)
_SEED = 0x1ade


class LookaheadDrafter(BaseDrafter):
    """Lookahead decoding (see the module docstring).

    :param window: W, the window's columns, or "auto".
    :param ngram: N, n-gram size (>= 3): N - 1 window levels, candidates of N - 1 tokens; or "auto".
    :param guesses: G, most candidates verified per step, or "auto" (only the nodes that pay).
    :param pool_cap: n-grams kept per key (default G).
    :param pool_from_prompt: also pool the n-grams of the prompt and of the generated text.
    :param window_gain: with `window="auto"`, the extra tokens per step a window is assumed to
        bring until its gain is measured.
    :param cost: verification cost model of the target (`auto` sizes from it).
    :param min_gain: least expected speed gain worth drafting guesses for (`guesses="auto"`).
    :param max_positions: the target's context length: the window is left out of a step whose
        rows would sit beyond it.
    """

    def __init__(self, window: int | str = "auto", ngram: int | str = "auto", guesses: int | str = "auto", *,
                 pool_cap: int | None = None, pool_from_prompt: bool = True, window_gain: float = 0.1,
                 cost: CostModel | None = None, min_gain: float = 0.0, max_positions: int | None = None):
        self.cost = cost or CostModel()
        self.width, self.ngram = choose_window(self.cost, window, ngram, window_gain)
        self.auto_window = window == "auto"
        self.auto_guesses = guesses == "auto"
        self.guesses = max(self.width, AUTO_MIN_GUESSES) if self.auto_guesses else int(guesses)
        self.pool_cap = pool_cap or max(self.guesses, 1)
        self.pool_from_prompt = pool_from_prompt
        self.min_gain = min_gain
        self.max_positions = max_positions
        self.pool = NGramPool(self.pool_cap)
        self.window = JacobiWindow(self.width, self.ngram)
        self.window_overhead = self.cost.step_cost(window_rows(self.width, self.ngram)) - 1.0
        self.window_gain = WindowGain(self.window_overhead, self.ngram - 1)
        depth = self.ngram - 1
        self.acceptance = SlotAcceptance([PRIOR[source][level > 0] for source in (WINDOW, TEXT)
                                          for level in range(depth)])
        self.tracker = AcceptanceTracker(self.acceptance)
        self._random = random.Random(_SEED)
        self._indexed = 0
        self._last: Draft | None = None
        self._last_root = -1
        self._last_window = False

    def __repr__(self) -> str:
        guesses = f"auto<={self.guesses}" if self.auto_guesses else self.guesses
        return f"LookaheadDrafter(W={self.width}, N={self.ngram}, G={guesses}, pool_cap={self.pool_cap})"

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.pool.clear()
        self.window.levels = []
        self.window_gain = WindowGain(self.window_overhead, self.ngram - 1)
        self.tracker.reset()
        self._random = random.Random(_SEED)
        self._indexed = 0
        self._last, self._last_root, self._last_window = None, -1, False

    # -- proposing ------------------------------------------------------------------------------

    def propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        self._absorb(tokens)
        root = tokens[-1]
        budget = context.max_nodes
        rows = 0
        if self._window_runs(context):
            if not self.window.started:
                self.window.reset(self._guesses_from(tokens, self.window.initial_length))
            rows = self.window.num_rows
            if budget is not None and budget < rows + 1:
                rows = 0  # in a batch the window's rows count against the step's node budget
        limit = None if budget is None else budget - rows
        candidates = self.pool.candidates(root, self.guesses)
        sequences = [continuation[: context.max_depth] for continuation, _ in candidates]
        self.window_gain.add(len(tokens), sequences,
                             [sequence for sequence, (_, source) in zip(sequences, candidates) if source != WINDOW])
        draft = self._guess_tree(len(tokens), sequences, [source for _, source in candidates], rows, limit)
        if rows:
            offsets, among = self.window.layout()
            attends = torch.cat([torch.zeros(rows, draft.num_nodes, dtype=torch.bool), among], dim=1)
            aux = AuxTokens(torch.tensor(self.window.tokens(), dtype=torch.long), offsets, attends)
            draft = Draft(draft.tokens, draft.parents, None, aux)
        self._last, self._last_root, self._last_window = draft, root, bool(rows)
        return draft

    def _window_runs(self, context: DraftContext) -> bool:
        runs = self.window_gain.runs() if self.auto_window else True
        if runs and self.max_positions is not None:
            furthest = len(context.tokens) - 1 + self.width + self.ngram - 3
            runs = furthest < self.max_positions
        return runs

    def _guess_tree(self, start: int, sequences: list, sources: list[int], rows: int, limit: int | None) -> Draft:
        """The candidates as one trie: all of them (up to `limit` nodes, shallow first), or with
        `guesses: auto` the nodes that pay on top of `rows` aux rows."""
        if not sequences or (limit is not None and limit <= 0):
            return _EMPTY
        tokens, parents, members = merge_sequences(sequences)
        depth = self.ngram - 1
        # a node's slot: its source (text if any candidate through it is text), then its depth
        slots = [(TEXT if any(sources[member] == TEXT for member in members[node]) else WINDOW) * depth
                 + min(level, depth) - 1 for node, level in enumerate(tree_depths(parents))]
        self.tracker.add(start, tokens, parents, slots)
        if not self.auto_guesses:
            trie = Draft(list(tokens), parents)
            order = breadth_first(parents)
            if limit is not None:
                order = order[:limit]
            return trie.subtree(order)
        chances = path_probabilities(parents, [self.acceptance.probability(slot) for slot in slots],
                                     max_sibling_sum=MAX_SIBLING_SUM)
        cost = OnTopOf(self.cost, rows) if rows else self.cost
        nodes = select_nodes(chances, parents, cost, min_gain=self.min_gain, max_nodes=limit)
        if not nodes:
            return _EMPTY
        return Draft([tokens[node] for node in nodes], subtree_parents(parents, nodes))

    def _guesses_from(self, tokens: Sequence[int], count: int) -> list[int]:
        """Initial window guesses: tokens copied from the text at random (the reference's
        `copy_from`), from a generator of the drafter's own (the sampling stream stays untouched)."""
        return [tokens[self._random.randrange(len(tokens))] for _ in range(count)]

    # -- learning -------------------------------------------------------------------------------

    def _absorb(self, tokens: Sequence[int]) -> None:
        """Bring the pool and the acceptance estimates up to the committed `tokens`."""
        self.tracker.update(tokens)
        self.window_gain.update(tokens)
        if self.pool_from_prompt:
            self.pool.add_text(tokens, self.ngram, self._indexed)
        self._indexed = len(tokens)

    def observe(self, outcome: StepOutcome) -> None:
        draft = self._last
        self._last = None
        if draft is None or not outcome.draft.derives_from(draft) or not self._last_window or outcome.aux_logits is None:
            return  # not our draft (inside a composite), or no window this step: it stays as it is
        outputs = outcome.aux_logits.argmax(dim=-1).tolist()
        self.window.advance(self._last_root, outputs, self.pool)


class JacobiDrafter(BaseDrafter):
    """Plain Jacobi decoding: the draft is the window itself (see the module docstring).

    :param window: W, the chain of guesses, or "auto": up to `JACOBI_AUTO_WIDTH` guesses, of which
        each step drafts the prefix whose learned acceptance pays for its verification.
    :param cost: verification cost model of the target (for "auto").
    :param min_gain: least expected speed gain worth drafting for ("auto").
    """

    wants_logits = True

    def __init__(self, window: int | str = "auto", *, cost: CostModel | None = None, min_gain: float = 0.0):
        self.auto = window == "auto"
        self.width = JACOBI_AUTO_WIDTH if self.auto else int(window)
        if self.width < 1:
            raise ValueError(f"the Jacobi window needs at least one guess, got {window}")
        self.cost = cost or CostModel()
        self.min_gain = min_gain
        self.acceptance = SlotAcceptance([JACOBI_PRIOR[0]] + [JACOBI_PRIOR[1]] * (self.width - 1))
        self.tracker = AcceptanceTracker(self.acceptance)
        self.start((), SamplingParams())

    def __repr__(self) -> str:
        return f"JacobiDrafter(W={'auto<=' if self.auto else ''}{self.width})"

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.guesses: list[int] = []  # guesses[i] is for the position root + 1 + i
        self.tracker.reset()
        self._random = random.Random(_SEED)
        self._last: Draft | None = None
        self._length = 0  # committed tokens the guesses are aligned to: guesses[0] is for index _length

    def propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        self.tracker.update(tokens)
        self.guesses = self.guesses[len(tokens) - self._length:]  # tokens committed unobserved (none, usually)
        while len(self.guesses) < self.width:
            self.guesses.append(tokens[self._random.randrange(len(tokens))])
        chain = self.guesses[: self.width]
        parents = list(range(-1, len(chain) - 1))
        self.tracker.add(len(tokens), chain, parents, list(range(len(chain))))
        limit = context.max_depth if context.max_nodes is None else min(context.max_depth, context.max_nodes)
        if self.auto:
            chances = self.acceptance.path_probabilities(parents, list(range(len(chain))))
            size = len(select_nodes(chances, parents, self.cost, min_gain=self.min_gain, max_nodes=limit))
        else:
            size = min(len(chain), limit)
        draft = Draft.chain(chain[:size]) if size else _EMPTY
        self._last, self._length = draft, len(tokens)
        return draft

    def observe(self, outcome: StepOutcome) -> None:
        draft, self._last = self._last, None
        committed, self._length = len(outcome.tokens) - self._length, len(outcome.tokens)
        if draft is None or not outcome.draft.derives_from(draft) or outcome.logits is None or not outcome.draft.num_nodes:
            self.guesses = self.guesses[committed:]  # another drafter's draft, or none: only shift
            return
        accepted, size = len(outcome.path), outcome.draft.num_nodes  # the engine may have cut the chain
        # row r predicts the position root + r + 1; the next root sits at root + accepted + 1
        refined = outcome.logits[accepted + 1: size + 1].argmax(dim=-1).tolist()
        self.guesses = refined + self.guesses[size + 1:]
