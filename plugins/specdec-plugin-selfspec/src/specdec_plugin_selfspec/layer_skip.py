"""The `layer_skip` drafter: the target drafts for itself with some of its layers skipped.

It runs the target's own weights, a subset of its decoder layers (`DecoderStack`), directly on the
target's KV cache (the verifier's `PositionalKVCache`, in the sequence's slot: `context.slot`).
For every committed position the layers it runs find the target's exact keys and values there;
its draft tokens' entries go after the committed ones, where nothing committed lives: the
verification forward writes every layer at those positions and only `commit` moves a slot's
length, so a draft entry can never pass for a committed one (the test suite compares the cache
with a fresh forward after every step). There is no second cache to prefill or roll back.

Which layers to skip: given in YAML, or `auto` (SWIFT, Xia et al. 2025, in spirit): for its first
`search_steps` drafting steps (over the drafter's lifetime, not per generation: a scoring forward
over the window costs about a plain step, and a drafter serves many requests) `LayerSearch`
scores one candidate set per step on the last `window` generated tokens (each token drafted from
the target's exact cache of the tokens before it: the depth-1 acceptance rate, in one forward
over the window) and keeps the set that promises the most committed tokens per unit of draft
plus verification time; after that it rescores the chosen set and one neighbour every
`recheck_every` steps (further apart while no set pays: the gap doubles after each recheck that
finds none, up to `MAX_RECHECK_BACKOFF` times). A promise is checked against what drafting with
the chosen set delivers: after `MIN_REALIZED_STEPS` drafting steps, the committed tokens per
plain step's time actually achieved (draft forwards and verification timed) replace the promise,
until the set is rescored. Candidates start from a ladder of sets that skip the
layers which change the hidden state least (1 - cosine similarity of a layer's input and output
on the first prompt, ShortGPT's block influence), then move locally (skip one more, one fewer,
swap one) with an occasional random set. When no set beats plain decoding, the drafter drafts
nothing until a recheck finds one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from specdec import BaseDrafter, Draft, DraftContext, SamplingParams, StepOutcome

from specdec_plugin_selfspec.chain import ChainSizer, pick
from specdec_plugin_selfspec.stack import DecoderStack

#: Fewest generated tokens a candidate set is scored on.
MIN_WINDOW = 4
#: Drafting steps with the chosen set before what they achieved replaces what its score promised.
MIN_REALIZED_STEPS = 4
#: Weight of a new step in the achieved value's moving average (after MIN_REALIZED_STEPS).
REALIZED_WEIGHT = 0.1
#: While no set pays, the gap between rechecks doubles after each, up to this many times
#: `recheck_every` (each recheck costs two scoring forwards, each about a plain step on a CPU and
#: several on a GPU whose plain step replays a CUDA graph).
MAX_RECHECK_BACKOFF = 8


@dataclass
class Candidate:
    run: tuple[int, ...]  # layers run (model indices, increasing)
    acceptance: float  # depth-1 acceptance on the window it was scored on
    value: float  # expected committed tokens per plain step's time (1.0 = plain decoding)


@dataclass
class SearchLog:
    """What the search did, for reports: one line per scored candidate."""

    scored: list[tuple[int, tuple[int, ...], float, float]] = field(default_factory=list)  # (step, skipped, acc, value)
    chosen: list[tuple[int, tuple[int, ...] | None]] = field(default_factory=list)  # (step, skipped or None)


class LayerSearch:
    """Finds the set of layers to run (see the module docstring). Cross-request state: the layers'
    influence and the best set found so far seed the next generation's search."""

    def __init__(self, num_layers: int, *, max_skip: float = 0.5, window: int = 24, search_steps: int = 16,
                 recheck_every: int = 32, seed: int = 0):
        self.num_layers = num_layers
        self.max_skip = max(1, int(max_skip * num_layers))
        self.window = window
        self.search_steps = search_steps
        self.recheck_every = recheck_every
        self.random = random.Random(seed)
        self.influence: list[float] | None = None  # per layer: 1 - cos(input, output)
        self.best: Candidate | None = None  # the incumbent, kept across requests
        self.log = SearchLog()
        self._queue: list[tuple[int, ...]] = []
        self._searched = 0
        self._since_check = 0
        self.recheck_gap = recheck_every  # grows while no set pays (MAX_RECHECK_BACKOFF)
        self._paying = True  # whether `current` last found a set that beats plain decoding
        self.realized: float | None = None  # committed tokens per plain step's time drafting with best.run
        self._realized_steps = 0

    @property
    def middle(self) -> list[int]:
        """Layers that may be skipped: all but the first and the last (as SWIFT)."""
        return list(range(1, self.num_layers - 1))

    def start(self) -> None:
        """A new generation: the search goes on where it was (its steps count over the drafter's
        lifetime); an unfinished search starts again from the ladder."""
        if self._searched < self.search_steps:
            self._queue = self._ladder()

    def learn_influence(self, states: dict[int, torch.Tensor]) -> None:
        """`states[i]`: `[n, H]` inputs of layer i (Hugging Face hidden_states index i), i < L."""
        influence = [1.0] * self.num_layers
        for layer in self.middle:
            before, after = states[layer].float(), states[layer + 1].float()
            cosine = torch.nn.functional.cosine_similarity(before, after, dim=-1)
            influence[layer] = float(1.0 - cosine.mean())
        self.influence = influence
        self._queue = self._ladder()

    def _order(self) -> list[int]:
        """Middle layers, least influential first (deepest first without influence)."""
        if self.influence is None:
            return sorted(self.middle, reverse=True)
        return sorted(self.middle, key=lambda layer: self.influence[layer])

    def _run(self, skipped) -> tuple[int, ...]:
        skipped = set(skipped)
        return tuple(layer for layer in range(self.num_layers) if layer not in skipped)

    def _ladder(self) -> list[tuple[int, ...]]:
        order = self._order()
        sizes = sorted({max(1, round(self.max_skip * share)) for share in (0.15, 0.3, 0.5, 0.75, 1.0)})
        ladder = [self._run(order[:size]) for size in sizes]
        if self.best is not None and self.best.run not in ladder:
            ladder.insert(0, self.best.run)
        return ladder

    def _neighbour(self, run: tuple[int, ...]) -> tuple[int, ...]:
        skipped = [layer for layer in self.middle if layer not in run]
        kept = [layer for layer in self.middle if layer in run]
        order = self._order()
        move = self.random.random()
        if move < 0.15:  # a random set of the same size, as SWIFT's random search
            return self._run(self.random.sample(self.middle, max(1, len(skipped))))
        if move < 0.4 and kept and len(skipped) < self.max_skip:  # skip one more: the least influential kept
            return self._run(skipped + [next(layer for layer in order if layer in kept)])
        if move < 0.6 and len(skipped) > 1:  # skip one fewer: the most influential skipped
            return self._run([layer for layer in skipped if layer != max(skipped, key=order.index)])
        if skipped and kept:  # swap one skipped layer for a kept one
            out, into = self.random.choice(skipped), self.random.choice(kept)
            return self._run([layer for layer in skipped if layer != out] + [into])
        return run

    def next_candidate(self) -> tuple[int, ...] | None:
        """The set to score at this step, or None (not searching now)."""
        if self._searched < self.search_steps:
            self._searched += 1
            if self._queue:
                return self._queue.pop(0)
            return self._neighbour(self.best.run) if self.best is not None else None
        self._since_check += 1
        if self._since_check >= self.recheck_gap and self.best is not None:
            self._since_check = 0
            if not self._paying:  # (`current` resets the gap as soon as a set pays)
                self.recheck_gap = min(2 * self.recheck_gap, MAX_RECHECK_BACKOFF * self.recheck_every)
            self._queue = [self._neighbour(self.best.run)]
            return self.best.run
        if self._queue and self._since_check == 1:
            return self._queue.pop(0)
        return None

    def record(self, step: int, candidate: Candidate) -> None:
        self.log.scored.append((step, tuple(layer for layer in range(self.num_layers) if layer not in candidate.run),
                                round(candidate.acceptance, 4), round(candidate.value, 4)))
        if self.best is None or candidate.run == self.best.run or candidate.value > self.best.value:
            changed = self.best is None or self.best.run != candidate.run
            self.best = candidate
            self.realized, self._realized_steps = None, 0  # a new or rescored promise gets its chance
            if changed:
                self.log.chosen.append((step, tuple(layer for layer in range(self.num_layers)
                                                    if layer not in candidate.run)))

    def achieved(self, run: tuple[int, ...], value: float) -> None:
        """A drafting step with `run` committed `value` tokens per plain step's time."""
        if self.best is None or run != self.best.run:
            return
        self._realized_steps += 1
        if self.realized is None:
            self.realized = value
        elif self._realized_steps <= MIN_REALIZED_STEPS:  # the mean of the first steps
            self.realized += (value - self.realized) / self._realized_steps
        else:
            self.realized += REALIZED_WEIGHT * (value - self.realized)

    def current(self, min_value: float) -> tuple[int, ...] | None:
        """The layers to draft with, or None while no set is expected (or, once measured, seen)
        to beat plain decoding."""
        if self.best is None:
            return None
        value = self.realized if self._realized_steps >= MIN_REALIZED_STEPS else self.best.value
        self._paying = value > min_value
        if self._paying:  # e.g. the recheck that just ran found a set that pays
            self.recheck_gap = self.recheck_every
        return self.best.run if self._paying else None


class LayerSkipDrafter(BaseDrafter):
    """Drafts chains with a subset of the target's layers over the target's own KV cache.

    :param verifier: the pipeline's verifier; its `.cache` is the target's `PositionalKVCache`.
    :param stack: all the target's layers (`DecoderStack` over `target_layers`), of which a subset runs.
    :param sizer: decides each chain's length.
    :param vocab: a truncated draft vocabulary, or None.
    :param run: the layers to run (a fixed set); None with `search`.
    :param search: finds the set while decoding (`skip: auto`).
    """

    def __init__(self, verifier, stack: DecoderStack, sizer: ChainSizer, vocab=None, greedy_draft: bool = False, *,
                 run: Sequence[int] | None = None, search: LayerSearch | None = None):
        if (run is None) == (search is None):
            raise ValueError("give either a fixed set of layers to run or a search")
        self.verifier = verifier
        self.stack = stack
        self.sizer = sizer
        self.vocab = None if vocab is None else vocab.to(stack.device)
        self.greedy_draft = greedy_draft
        self.fixed_run = None if run is None else tuple(run)
        self.search = search
        # a draft forward's cost in layer-equivalents: the layers run, plus the vocabulary
        # projection's weights counted in layers, plus half a layer for the rest
        model = verifier.model
        layer_params = sum(parameter.numel() for parameter in model.model.layers[0].parameters())
        rows = verifier.vocab_size if self.vocab is None else self.vocab.size
        self.head_units = rows * model.get_output_embeddings().weight.shape[1] / layer_params + 0.5
        self.unit_seconds: float | None = None  # one layer-equivalent's time, measured
        self._last: Draft | None = None
        self._step: tuple[tuple[int, ...], float, float] | None = None  # (run, draft seconds, handed over at)

    @property
    def hidden_state_layers(self) -> tuple[int, ...]:
        """The inputs of every layer, until the search has the layers' influence (the first
        prompt's states give it, from the verifier's own prefill forward: no extra forward)."""
        if self.search is not None and self.search.influence is None:
            return tuple(range(self.stack.num_layers))
        return ()

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.sizer.start()
        self._last = None
        if self.search is not None:
            self.search.start()

    # -- costs -------------------------------------------------------------------------------------

    def _units(self, run: Sequence[int]) -> float:
        return len(run) + self.head_units

    def draft_cost(self, run: Sequence[int]) -> float:
        """One draft forward through `run`, in plain target steps: measured per layer-equivalent
        once there are timings, else the share of the full model's layers."""
        share = self._units(run) / self._units(range(self.stack.num_layers))
        if self.sizer.fixed_draft_cost is not None:  # given for the whole stack: a subset costs its share
            return self.sizer.fixed_draft_cost * share
        plain = self.sizer.step_seconds.value
        if self.unit_seconds is None or plain is None:
            return share  # before any timing: the full stack costs about a plain step
        return self.unit_seconds * self._units(run) / plain

    def _value(self, acceptance: float, run: Sequence[int]) -> float:
        """Expected committed tokens per plain step's time with the best chain length, each
        token accepted at `acceptance` (given the previous was)."""
        c, best, chance, gained = self.draft_cost(run), 1.0, 1.0, 0.0
        for length in range(1, self.sizer.max_tokens + 1):
            chance *= acceptance
            gained += chance
            best = max(best, (1.0 + gained) / (length * c + self.sizer.cost.step_cost(length)))
        return best

    # -- drafting ----------------------------------------------------------------------------------

    def _forward(self, store, ids, start: int, run, allowed=None, span=None, logits_rows=1):
        count = len(ids)
        return self.stack.forward(torch.tensor(ids, dtype=torch.long), torch.arange(start, start + count), store,
                                  start, span if span is not None else start + count, allowed, run, logits_rows)

    def _window(self, context: DraftContext, committed: int) -> int:
        """How many recent generated tokens a candidate can be scored on now (each scored token's
        predecessor must be generated too, and the scratch entries must fit in the cache)."""
        generated = len(context.tokens) - context.num_prompt_tokens  # the root is committed and generated
        return min(self.search.window, generated - 1, self.verifier.cache.capacity - committed)

    def _score(self, context: DraftContext, store, committed: int, run: tuple[int, ...], window: int) -> Candidate:
        """Depth-1 acceptance of `run` on the last `window` generated tokens: token j drafted from
        the target's exact entries before it (one forward; the window's own entries go to
        scratch positions after the committed ones)."""
        tokens = context.tokens
        first = committed - window  # inputs at positions first..committed-1 predict tokens first+1..committed
        rows = torch.arange(window)[:, None]
        columns = torch.arange(committed + window)[None]
        allowed = (columns < first + rows) | (columns == committed + rows)  # [W, committed + W]
        positions = torch.arange(first, committed)
        logits = self.stack.forward(torch.tensor(tokens[first:committed], dtype=torch.long), positions, store,
                                    committed, committed + window, allowed, run, logits_rows=window)
        predicted = logits.argmax(-1).cpu()
        if self.vocab is not None:
            predicted = self.vocab.token_ids.cpu()[predicted]
        actual = torch.tensor(tokens[first + 1: committed + 1])
        acceptance = float((predicted == actual).float().mean())
        return Candidate(run, acceptance, self._value(acceptance, run))

    def propose(self, context: DraftContext) -> Draft:
        self._last = None
        self._step = None
        cache, slot = self.verifier.cache, context.slot
        committed = cache.lengths[slot]
        if cache.buffer is None or committed != len(context.tokens) - 1:
            return Draft.empty()  # the prompt is not in the target's cache yet (the first step)
        store = cache.buffer[:, :, slot]  # [L, 2, H_kv, capacity, D], a view: writes land in the cache
        run = self.fixed_run
        if self.search is not None:
            window = self._window(context, committed)
            candidate = self.search.next_candidate() if window >= MIN_WINDOW else None
            if candidate is not None:
                self.search.record(context.step, self._score(context, store, committed, candidate, window))
            run = self.search.current(1.0 + self.sizer.min_gain)
        limit = min(self.sizer.max_tokens, context.max_depth, cache.capacity - committed - 1,
                    context.max_nodes if context.max_nodes is not None else self.sizer.max_tokens)
        if run is None or limit < 1:
            return Draft.empty()
        self.sizer.current_cost = self.draft_cost(run)
        if self.fixed_run is not None and not self.sizer.should_draft():
            return Draft.empty()  # a given set that does not pay here: decode plainly, look again now and then
        sample = not context.params.greedy and not self.greedy_draft
        picks, chances = [], []
        token, position = context.tokens[-1], committed
        started = time.perf_counter()
        while True:
            tic = time.perf_counter()
            logits = self._forward(store, [token], position, run)[-1]
            chosen = pick(logits, context, self.vocab, sample)
            elapsed = time.perf_counter() - tic
            self.sizer.time_forward(elapsed)
            sample_unit = elapsed / self._units(run)
            self.unit_seconds = sample_unit if self.unit_seconds is None else \
                self.unit_seconds + 0.1 * (sample_unit - self.unit_seconds)
            picks.append(chosen)
            chances.append(self.sizer.rate(chosen.confidence) * (chances[-1] if chances else 1.0))
            if not self.sizer.keep_drafting(chances, len(picks), limit):
                break
            token, position = chosen.token, position + 1
        draft = self.sizer.hand_over(len(context.tokens), picks, chances, sample)
        now = time.perf_counter()
        self._step = (run, now - started, now)
        if draft.num_nodes:
            self._last = draft
        return draft

    def observe(self, outcome: StepOutcome) -> None:
        if self._step is not None and self.search is not None:
            run, drafting, handed_over = self._step
            plain = self.sizer.step_seconds.value
            if plain:
                seconds = drafting + time.perf_counter() - handed_over
                self.search.achieved(run, (len(outcome.accepted_tokens) + 1) * plain / seconds)
        self._step = None
        self.sizer.observed(outcome.tokens)
        if self.search is not None and self.search.influence is None and outcome.hidden_states:
            self.search.learn_influence(outcome.hidden_states)
        self._last = None
