"""How long a chain to draft: the draft's confidence against the measured cost curve.

Both drafters draft a chain one forward at a time, so each further token costs one more draft
forward, and verifying it costs what the target's cost curve says (on a CPU the curve is far from
linear: the first one or two draft tokens ride almost free on the plain step, the third costs a
lot, the next ones little). A step that drafts k tokens and verifies the first m of them commits
`1 + P_1 + ... + P_m` tokens on average, where P_i is the chance that tokens 1..i are all
accepted, and takes `k c + v(m)` plain steps (c: one draft forward, v: the cost curve).
`ChainSizer` maximises that ratio:

- after each drafted token it estimates the chances of the tokens not drafted yet (each further
  token accepted at the rate of the current one's confidence bucket) and drafts on while some
  longer chain promises a better ratio (it looks past the curve's expensive third token);
- when drafting stops it keeps the prefix with the best ratio (`specdec.select_nodes`), the
  drafting already spent counted in.

The draft's top-1 probability is not the acceptance rate. The chance of each confidence bucket is
learned online from what the target committed (`specdec.SlotAcceptance` through an
`AcceptanceTracker`, which is exact for these drafts: a lossless policy accepts a draft token
exactly when the committed token equals it). `c` is measured online too: the drafter times its
forwards, and the time between handing a draft over and hearing its outcome, divided by the cost
curve at that draft's size, is a plain step's time under the same load.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from specdec import AcceptanceTracker, CostModel, Draft, DraftContext, SlotAcceptance, warp_logits

#: A drafter that judged drafting not worth it still drafts every this many steps, to notice
#: when it becomes worth it again (`ChainSizer.should_draft`).
EXPLORE_EVERY = 8
#: The longest gap between such explorations, reached by doubling while one draft forward costs
#: a plain step or more.
MAX_EXPLORE_EVERY = 256

#: Upper edges of the confidence buckets (the last bucket runs to 1).
CONFIDENCE_EDGES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
#: A bucket's prior acceptance rate: its middle.
CONFIDENCE_PRIOR = (0.15, 0.4, 0.6, 0.75, 0.85, 0.925, 0.965, 0.99)


def confidence_bucket(confidence: float) -> int:
    return bisect.bisect_right(CONFIDENCE_EDGES, confidence)


@dataclass
class Pick:
    token: int  # target vocabulary id
    confidence: float  # the draft's probability of its top token (after warping)
    q: torch.Tensor | None  # [V] the exact distribution the token was drawn from (sampled drafts)


def pick(logits: torch.Tensor, context: DraftContext, vocab, sample: bool) -> Pick:
    """Choose the next draft token from draft logits `[V_draft]` (float32).

    Greedy: the argmax, no q. Sampling: a draw from the draft's warped distribution (the same
    temperature / top-k / top-p as the target's), through `context.rng`, with that distribution
    as q, widened to the target's vocabulary with zeros outside a truncated draft vocabulary.
    """
    if not sample:
        index = int(logits.argmax())
        confidence = float(1.0 / torch.exp(logits - logits[index]).sum())
        token = index if vocab is None else int(vocab.token_ids[index])
        return Pick(token, confidence, None)
    probs = warp_logits(logits, context.params)  # [V_draft]
    q = probs if vocab is None else vocab.widen(probs)  # [V]
    token = context.rng.categorical(q)
    return Pick(token, float(probs.max()), q)


class _Average:
    """An exponential moving average that answers None until it has a value."""

    def __init__(self, weight: float = 0.1):
        self.weight, self.value = weight, None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self.weight * (sample - self.value)


class ChainSizer:
    """Sizes chain drafts by expected tokens per unit of time (see the module docstring).

    One per drafter instance: the confidence calibration and the timings carry over between the
    requests it serves; `start` drops what belongs to the previous sequence.

    :param cost: the target's verification cost curve (`specdec.cost_model_for`).
    :param max_tokens: the longest chain.
    :param draft_cost: one draft forward in plain steps; None = measured online.
    :param min_gain: least expected speed gain over a plain step worth verifying a draft for.
    :param initial_draft_cost: the estimate before anything is measured.
    """

    def __init__(self, cost: CostModel, max_tokens: int, draft_cost: float | None = None, min_gain: float = 0.0,
                 initial_draft_cost: float = 0.5):
        self.cost = cost
        self.max_tokens = max_tokens
        self.fixed_draft_cost = draft_cost
        self.current_cost: float | None = None  # set by a drafter whose forward cost varies (layer_skip)
        self.min_gain = min_gain
        self.acceptance = SlotAcceptance(CONFIDENCE_PRIOR)
        self.tracker = AcceptanceTracker(self.acceptance)
        self.forward_seconds = _Average()  # one draft forward
        self.step_seconds = _Average()  # one plain target step, from the verification gaps
        self.initial_draft_cost = initial_draft_cost
        self.first_token_rate = _Average(0.1)  # how often the first drafted token is accepted
        self._first: tuple[int, int] | None = None  # (position, token) of the last chain's first token
        self._handed_over: float | None = None
        self._handed_nodes = 0
        self.explore_every = EXPLORE_EVERY  # steps between explorations while drafting does not pay
        self._idle = 0  # steps without drafting since the last draft

    def start(self) -> None:
        self.tracker.reset()
        self._handed_over = None
        self._first = None

    @property
    def draft_cost(self) -> float:
        """One draft forward, in plain target steps."""
        if self.current_cost is not None:
            return self.current_cost
        if self.fixed_draft_cost is not None:
            return self.fixed_draft_cost
        if self.forward_seconds.value is None or self.step_seconds.value is None:
            return self.initial_draft_cost
        return self.forward_seconds.value / self.step_seconds.value

    def rate(self, confidence: float) -> float:
        """Learned chance that a draft token of this confidence is accepted (its parent was)."""
        return self.acceptance.probability(confidence_bucket(confidence))

    def time_forward(self, seconds: float) -> None:
        self.forward_seconds.add(seconds)

    def keep_drafting(self, chances: Sequence[float], drafted: int, limit: int) -> bool:
        """After `drafted` forwards gave tokens whose path chances are `chances`: does drafting
        more promise a better ratio than stopping (looking up to `limit` tokens)?"""
        c = self.draft_cost
        best_now = self._best_prefix_ratio(chances, drafted * c)
        if len(chances) >= limit:
            return False
        last = chances[-1] if chances else 1.0
        step_rate = chances[-1] / chances[-2] if len(chances) >= 2 and chances[-2] > 0 else last
        gained, chance = sum(chances), last
        for more in range(1, limit - len(chances) + 1):
            chance *= step_rate
            gained += chance
            if (1.0 + gained) / ((drafted + more) * c + self.cost.step_cost(len(chances) + more)) > best_now:
                return True
        return False

    def keep(self, chances: Sequence[float], drafted: int) -> int:
        """How many of the drafted tokens to verify: the prefix with the best ratio (0 = none,
        when no prefix beats `1 + min_gain` plain steps' worth)."""
        spent = drafted * self.draft_cost
        best, size = (1.0 + self.min_gain) / (spent + 1.0), 0
        total = 0.0
        for index, chance in enumerate(chances, 1):
            total += chance
            ratio = (1.0 + total) / (spent + self.cost.step_cost(index))
            if ratio > best:
                best, size = ratio, index
        return size

    def worth_drafting(self) -> bool:
        """Before any forward: would some chain length beat a plain step, if each token were
        accepted at the rate first tokens recently were? (When not, the step decodes plainly;
        the drafter still drafts now and then to notice when that changes.)"""
        rate = self.first_token_rate.value
        if rate is None:
            return True
        c = self.draft_cost
        chance, gained = 1.0, 0.0
        for length in range(1, self.max_tokens + 1):
            chance *= rate
            gained += chance
            if (1.0 + gained) / (length * c + self.cost.step_cost(length)) > 1.0 + self.min_gain:
                return True
        return False

    def should_draft(self) -> bool:
        """Draft at this step? Always while drafting pays (`worth_drafting`). Otherwise once every
        `explore_every` steps, to notice when it pays again; and while one draft forward costs a
        plain step or more, no chain can beat a plain step whatever is accepted (k drafted tokens
        cost k c + v(k) >= k + 1 plain steps for at most k + 1 tokens), so each exploration that
        finds that again doubles the gap, up to MAX_EXPLORE_EVERY steps. That case is real: on a
        GPU whose target replays CUDA graphs, an eager forward of a drafter costs several plain
        steps (docs/benchmarks.md, "GPU: NVIDIA H200"), and exploring every 8 steps cost 60%."""
        if self.worth_drafting():
            self._idle, self.explore_every = 0, EXPLORE_EVERY
            return True
        if self.draft_cost < 1.0:  # (as last measured, an exploration included)
            self.explore_every = EXPLORE_EVERY
        self._idle += 1
        if self._idle < self.explore_every:
            return False
        self._idle = 0
        if self.draft_cost >= 1.0:
            self.explore_every = min(2 * self.explore_every, MAX_EXPLORE_EVERY)
        return True

    def _best_prefix_ratio(self, chances: Sequence[float], spent: float) -> float:
        best, total = 1.0 / (spent + 1.0), 0.0
        for index, chance in enumerate(chances, 1):
            total += chance
            best = max(best, (1.0 + total) / (spent + self.cost.step_cost(index)))
        return best

    # -- learning from outcomes --------------------------------------------------------------------

    def proposed(self, start: int, tokens: Sequence[int], confidences: Sequence[float]) -> None:
        """A chain was drafted after `start` committed tokens (all its tokens teach the
        calibration, the verified prefix and the rest alike); `handed_over` starts the clock."""
        slots = [confidence_bucket(confidence) for confidence in confidences]
        self.tracker.add(start, list(tokens), list(range(-1, len(tokens) - 1)), slots)
        self._first = (start, tokens[0]) if tokens else None

    def hand_over(self, start: int, picks: Sequence[Pick], chances: Sequence[float], sample: bool) -> Draft:
        """The draft to verify out of a drafted chain: every pick teaches the calibration, the
        prefix with the best ratio (`keep`) is handed over, and its clock starts.

        :param start: committed tokens before the chain.
        :param chances: the picks' path chances, as `keep_drafting` saw them.
        :param sample: whether the picks were sampled (their `q` goes into the draft).
        """
        self.proposed(start, [p.token for p in picks], [p.confidence for p in picks])
        kept = self.keep(chances, len(picks))
        self.handed_over(kept)
        if kept == 0:
            return Draft.empty()
        kept_picks = picks[:kept]
        return Draft.chain([p.token for p in kept_picks], torch.stack([p.q for p in kept_picks]) if sample else None)

    def handed_over(self, num_nodes: int) -> None:
        self._handed_over, self._handed_nodes = time.perf_counter(), num_nodes

    def observed(self, committed: Sequence[int]) -> None:
        """The outcome arrived: learn acceptance from the committed tokens, and a plain step's
        time from how long verifying the handed-over draft took."""
        if self._handed_over is not None:
            elapsed = time.perf_counter() - self._handed_over
            self.step_seconds.add(elapsed / self.cost.step_cost(self._handed_nodes))
            self._handed_over = None
        if self._first is not None and len(committed) > self._first[0]:
            self.first_token_rate.add(float(committed[self._first[0]] == self._first[1]))
            self._first = None
        self.tracker.update(committed)
