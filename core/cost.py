"""What verifying a draft costs the target: the cost model drafters and the scheduler decide with.

Verifying m draft nodes costs `cost(m)` plain (one-token) steps. It depends on the model, the
device, the dtype and the batch size, and on a CPU it is far from linear in m: the first draft
nodes turn a matrix-vector product into a matrix product, later ones come nearly free; in a
batch, draft tokens stop being free sooner. Drafters that size their drafts by expected gain
divide the expected accepted tokens by this cost; the step scheduler's draft budget does the
same per batch size. Measured curves are in docs/benchmarks.md, with the commands that measure
them.

`measure_cost_model` times the target the way a decoding step uses it: a forward over the
pending token plus a chain of m draft tokens on a cache of `CONTEXT_TOKENS` committed tokens,
for each m in `DRAFT_SIZES`, and returns the curve (once per model per process);
`measure_batch_cost_model` does the same for a batch of sequences. `node_cost: auto` in a
pipeline file asks for the first, `scheduler: {draft_budget: auto}` for the second.
"""

from __future__ import annotations

import bisect
import statistics
import time
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch


@dataclass(frozen=True)
class CostModel:
    """Verification cost of a draft, in plain (one-token) steps.

    Linear by default: `1 + draft_overhead + node_cost * m` for m draft nodes. With `curve`
    (measured points `(m, cost)`, as `node_cost: auto` records them), the cost interpolates
    linearly between the points, and beyond the last one extends the last segment's slope. The
    curve matters on CPUs, where it is far from linear: the first draft nodes are expensive (a
    matrix-vector product becomes a matrix product) and later ones nearly free.

    :param node_cost: extra cost of each draft node (linear model).
    :param draft_overhead: extra fixed cost of a step that verifies any draft (linear model).
    :param curve: measured `(draft nodes, cost)` points, sizes increasing; replaces the linear model.
    :param plain_seconds: the measured seconds of the plain step the costs are relative to (0:
        not measured); lets host-side work such as drafting be counted in plain steps too.
    """

    node_cost: float = 0.08
    draft_overhead: float = 0.0
    curve: tuple[tuple[int, float], ...] = ()
    plain_seconds: float = 0.0

    def __post_init__(self):
        sizes = [size for size, _ in self.curve]
        if any(size <= 0 for size in sizes) or sizes != sorted(set(sizes)):
            raise ValueError(f"curve sizes must be positive and increasing, got {sizes}")

    @cached_property
    def _points(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The curve with a plain step at 0 nodes, as (sizes, costs)."""
        return (0,) + tuple(size for size, _ in self.curve), (1.0,) + tuple(cost for _, cost in self.curve)

    def step_cost(self, num_nodes: int) -> float:
        """What verifying `num_nodes` draft nodes costs, in plain steps (1.0 for no draft)."""
        if not num_nodes:
            return 1.0
        if not self.curve:
            return 1.0 + self.draft_overhead + self.node_cost * num_nodes
        sizes, costs = self._points
        right = min(max(bisect.bisect_left(sizes, num_nodes), 1), len(sizes) - 1)
        left = right - 1
        return costs[left] + (costs[right] - costs[left]) * (num_nodes - sizes[left]) / (sizes[right] - sizes[left])


def select_nodes(probabilities: Sequence[float], parents: Sequence[int], cost: CostModel, *,
                 min_gain: float = 0.0, adaptive: bool = True, max_nodes: int | None = None,
                 max_depth: int | None = None, max_leaves: int | None = None) -> list[int]:
    """The draft nodes that pay for their verification, parents first, likeliest first.

    `probabilities[i]` estimates the chance that node i is accepted (its whole path, so never
    more than its parent's). Verifying m nodes costs `cost.step_cost(m)` plain steps and commits
    `1 + sum p` tokens on average, so the speed ratio of a set is `(1 + sum p) / cost`. Nodes are
    scanned by decreasing probability (ties: shallower, then earlier), keeping a node when its
    parent is kept, its depth is within `max_depth`, it keeps the tree within `max_leaves`
    root-to-leaf branches and the set within `max_nodes`. With `adaptive`, the result is the
    prefix of that scan with the best ratio, or nothing when none beats `1 + min_gain` (plain
    decoding); without, the whole scan. Which nodes are drafted never changes what is accepted,
    so any selection is as lossless as the full tree.
    """
    from specdec.draft import tree_depths

    depths = tree_depths(parents)
    count = len(parents)
    order = sorted(range(count), key=lambda node: (-probabilities[node], depths[node], node))
    kept: list[int] = []
    is_kept = [False] * count
    has_child = [False] * (count + 1)  # by row: root = 0, node i = i + 1
    leaves, total = 0, 0.0
    best_ratio, best_size = 1.0 + min_gain, 0
    for node in order:
        if max_nodes is not None and len(kept) >= max_nodes:
            break
        parent = parents[node]
        if (max_depth is not None and depths[node] > max_depth) or (parent >= 0 and not is_kept[parent]):
            continue
        # a node's first child extends its branch; any further child (and any child of the
        # root, which is no branch yet) starts a new one
        adds_leaf = parent < 0 or has_child[parent + 1]
        if adds_leaf and max_leaves is not None and leaves >= max_leaves:
            continue
        leaves += adds_leaf
        has_child[parent + 1] = True
        is_kept[node] = True
        kept.append(node)
        total += probabilities[node]
        ratio = (1.0 + total) / cost.step_cost(len(kept))
        if ratio > best_ratio:
            best_ratio, best_size = ratio, len(kept)
    return kept[:best_size] if adaptive else kept


# -- what a drafter without probabilities learns about its own acceptance ---------------------------


class SlotAcceptance:
    """P(a draft node is accepted | its parent was), learned online, per slot.

    A drafter that drafts without probabilities (n-gram copies, retrieval, fixed trees) still
    needs the chance that each node is accepted to size its drafts (`select_nodes`). It puts
    each node in a *slot* of its choosing (its depth, a head and rank, a bucket of match length
    and support) and learns each slot's acceptance rate from what was committed, through
    `AcceptanceTracker`. Counts decay, so recent outcomes weigh most (`decay` 0.98 remembers
    about the last 50 trials of a slot), and are shrunk toward a prior mean by `prior_weight`
    pseudo-trials, so a slot with little data answers its prior.

    :param prior: prior acceptance rate of each slot (the number of slots).
    """

    def __init__(self, prior: Sequence[float], *, prior_weight: float = 4.0, decay: float = 0.98):
        self.prior = [min(max(float(mean), 0.0), 1.0) for mean in prior]
        self.prior_weight = prior_weight
        self.decay = decay
        self.successes = [0.0] * len(self.prior)
        self.trials = [0.0] * len(self.prior)

    @property
    def num_slots(self) -> int:
        return len(self.prior)

    def probability(self, slot: int) -> float:
        weight = self.prior_weight
        return (self.successes[slot] + weight * self.prior[slot]) / (self.trials[slot] + weight)

    def update(self, slot: int, accepted: bool) -> None:
        self.successes[slot] = self.successes[slot] * self.decay + accepted
        self.trials[slot] = self.trials[slot] * self.decay + 1.0

    def path_probabilities(self, parents: Sequence[int], slots: Sequence[int]) -> list[float]:
        """Each node's chance of being accepted, its whole path included (the input of
        `select_nodes`): the product of its slots' rates along the path."""
        return path_probabilities(parents, [self.probability(slot) for slot in slots])


def path_probabilities(parents: Sequence[int], conditional: Sequence[float], *,
                       max_sibling_sum: float | None = None) -> list[float]:
    """Each node's chance of being accepted with its whole path (the input of `select_nodes`):
    the product of the chances given the parent (`conditional`) along the path.

    :param max_sibling_sum: when given, siblings' conditionals are scaled down to sum to at most
        this. Deterministic siblings exclude each other (one token is committed after their
        parent, so at most one of them is accepted): estimates made for each sibling alone, or by
        different drafters, can otherwise add up to more than 1.
    """
    scaled = [float(value) for value in conditional]
    if max_sibling_sum is not None:
        totals: dict[int, float] = {}
        for parent, value in zip(parents, scaled, strict=True):
            totals[parent] = totals.get(parent, 0.0) + value
        scaled = [value * min(1.0, max_sibling_sum / totals[parent]) if totals[parent] > 0 else value
                  for parent, value in zip(parents, scaled)]
    result: list[float] = []
    for parent, value in zip(parents, scaled, strict=True):
        result.append(value * (1.0 if parent < 0 else result[parent]))
    return result


@dataclass
class _Pending:
    tokens: Sequence[int]
    children: tuple[tuple[int, ...], ...]
    slots: Sequence[int]
    position: int  # index in the token sequence of the next token to compare
    row: int = 0  # the deepest row matched so far (0 = root)


class AcceptanceTracker:
    """Scores candidate trees against the tokens committed after them, to teach a `SlotAcceptance`.

    This is exact, not an approximation, for deterministic drafts (no q): the lossless
    acceptance rule accepts a node exactly when the committed token equals it, and committed
    tokens are distributed as plain decoding whatever was drafted. So a tree can be scored
    whether or not it was drafted: a drafter that stopped drafting keeps learning, and starts
    again when its candidates would be accepted.

    A tree added when the sequence had `start` tokens predicts token `start` with its root's
    children, token `start + 1` with theirs, and so on. Every child of a matched row is one
    trial of its slot: a success when its token is the committed one.
    """

    def __init__(self, acceptance: SlotAcceptance, max_pending: int = 64):
        self.acceptance = acceptance
        self.max_pending = max_pending
        self.pending: list[_Pending] = []

    def reset(self) -> None:
        """A new sequence: pending trees are dropped (what was learned is kept)."""
        self.pending = []

    def add(self, start: int, tokens: Sequence[int], parents: Sequence[int], slots: Sequence[int]) -> None:
        """A candidate tree (node tokens, parents, and each node's slot) made after `start` tokens."""
        from specdec.draft import tree_children

        if tokens:
            self.pending.append(_Pending(list(tokens), tree_children(parents), list(slots), start))
            if len(self.pending) > self.max_pending:
                del self.pending[0]

    def update(self, tokens: Sequence[int]) -> None:
        """Compare the pending trees with the committed `tokens` (the whole sequence)."""
        acceptance, length = self.acceptance, len(tokens)
        alive = []
        for item in self.pending:
            while item.position < length:
                actual = tokens[item.position]
                matched = -1
                for child in item.children[item.row]:
                    hit = item.tokens[child] == actual
                    acceptance.update(item.slots[child], hit)
                    if hit:
                        matched = child
                if matched < 0:
                    break
                item.row = matched + 1
                item.position += 1
            else:
                if item.children[item.row]:
                    alive.append(item)
        self.pending = alive


#: Draft sizes the cost is measured at; the cost model interpolates between them.
DRAFT_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: Committed tokens in the cache while measuring (a mid-length Spec-Bench prompt and answer).
CONTEXT_TOKENS = 512
#: Timed forwards per size (after one warm-up each); the median is used.
REPEATS = 3

_measured: "weakref.WeakKeyDictionary[torch.nn.Module, CostModel]" = weakref.WeakKeyDictionary()


def measure_cost_model(model: torch.nn.Module) -> CostModel:
    """The target's verification cost curve (see the module docstring), cached per model."""
    if model not in _measured:
        _measured[model] = _measure(model)
    return _measured[model]


def cost_model_for(target: torch.nn.Module, node_cost: float | str, draft_overhead: float = 0.0) -> CostModel:
    """The cost model a drafter's `node_cost` parameter asks for: "auto" measures the target's
    curve (`measure_cost_model`), a number is the linear model with `draft_overhead`."""
    if node_cost == "auto":
        return measure_cost_model(target)
    return CostModel(node_cost=float(node_cost), draft_overhead=draft_overhead)


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it (CUDA runs
    asynchronously; CPU work is done when the call returns)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_verification(model: torch.nn.Module, sizes: Sequence[int], context: int = CONTEXT_TOKENS,
                      repeats: int = REPEATS, warmup: int = 1, seed: int = 0,
                      batch_size: int = 1) -> dict[int, list[float]]:
    """Seconds of one verification forward over `batch_size` sequences, each with a chain of m
    random draft tokens (m = 0: a plain step) on a cache of `context` random committed tokens,
    `repeats` times for each m in `sizes`.

    Sizes are interleaved within each round, so that load changes hit every size alike; the
    first `warmup` rounds are not timed. Nothing is committed, so every measurement sees the same
    context. A tree of m nodes costs what a chain does: only the mask differs.
    """
    from specdec.batch import DraftBatch
    from specdec.draft import Draft
    from specdec.verifiers.hf import HFVerifier

    verifier = HFVerifier(model, eos_token_ids=())
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    vocab = verifier.vocab_size
    largest = max(sizes, default=0)
    context = max(1, min(context, verifier.runner.max_positions - largest - 2))
    slots = tuple(range(batch_size))
    prompts = [torch.randint(0, vocab, (context,), generator=generator).tolist() for _ in slots]
    for slot, prompt in enumerate(prompts):
        verifier.start(len(prompt), largest + 2, slot)
    filled = DraftBatch((Draft.empty(),) * batch_size, tuple(tuple(prompt) for prompt in prompts), slots)
    verifier.verify_batch(filled)
    verifier.commit_batch(filled, [()] * batch_size)
    roots = tuple((prompt[-1],) for prompt in prompts)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for repeat in range(repeats + warmup):
        for size in times:
            drafts = tuple(Draft.chain(torch.randint(0, vocab, (size,), generator=generator).tolist())
                           if size else Draft.empty() for _ in slots)
            batch = DraftBatch(drafts, roots, slots)
            synchronize(device)
            tic = time.perf_counter()
            verifier.verify_batch(batch)  # not committed: the next forward overwrites its entries
            synchronize(device)
            elapsed = time.perf_counter() - tic
            if repeat >= warmup:
                times[size].append(elapsed)
    return times


def _measure(model: torch.nn.Module, sizes: Sequence[int] = DRAFT_SIZES, batch_size: int = 1,
             context: int = CONTEXT_TOKENS) -> CostModel:
    """The cost curve: each size's median time over the plain step's, never decreasing."""
    times = time_verification(model, (0,) + tuple(sizes), context, batch_size=batch_size)
    plain = statistics.median(times[0])
    curve, floor = [], 1.0
    for size in sizes:  # a larger draft never costs less: smooth out timing noise
        floor = max(floor, statistics.median(times[size]) / plain)
        curve.append((size, round(floor, 4)))
    measured = CostModel(curve=tuple(curve), plain_seconds=plain)
    # every rank of a sharded target timed the same forwards; rank 0's curve is used by all, so
    # that drafts sized from it stay the same on every rank (docs/scaling.md)
    tp = getattr(model, "specdec_tp", None)
    return tp.broadcast(measured) if tp is not None else measured


#: Draft sizes (tokens per sequence) the batched cost is measured at.
BATCH_DRAFT_SIZES = (1, 2, 4, 8, 16)
#: Committed tokens per sequence while measuring a batch.
BATCH_CONTEXT_TOKENS = 256

_measured_batch: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, CostModel]]" = weakref.WeakKeyDictionary()


def batch_bucket(batch_size: int) -> int:
    """The batch size whose measured cost stands for `batch_size`: the next power of two."""
    return 1 << max(0, batch_size - 1).bit_length()


def measure_batch_cost_model(model: torch.nn.Module, batch_size: int) -> CostModel:
    """Verification cost at a batch size: a forward over `batch_size` sequences, each with its
    pending token plus a chain of m draft tokens, in units of the same batch's plain step.

    Measured once per model and batch bucket (`batch_bucket`) on `BATCH_CONTEXT_TOKENS` committed
    tokens per sequence (a few seconds per bucket on a CPU). Batch size 1 is `measure_cost_model`.
    """
    bucket = batch_bucket(batch_size)
    if bucket == 1:
        return measure_cost_model(model)
    per_model = _measured_batch.setdefault(model, {})
    if bucket not in per_model:
        per_model[bucket] = _measure(model, BATCH_DRAFT_SIZES, bucket, BATCH_CONTEXT_TOKENS)
    return per_model[bucket]
