"""The step scheduler: many sequences, one verification forward per step.

One step, for every active sequence at once:

    draft (each sequence's own drafter) -> ONE batched target forward over every sequence's
    pending tokens and draft -> per-sequence acceptance -> per-sequence commit/rollback (ragged:
    each keeps a different number of tokens) -> stops -> tell each drafter

Requests are admitted between steps (continuous batching): a newcomer gets a free cache slot and
a drafter, and its prompt is prefilled in its own causal forward during its first step; a finished,
failed or cancelled sequence frees its slot at once. Active sequences occupy cache slots
`0..B-1` (a freed slot is filled by moving the last sequence into it), so the batched forward
reads one contiguous range of the cache.

Batch of one is this same loop: `SpeculativeDecoder` is a scheduler with one drafter.

Thread safety: `submit`, `cancel` and `step` take one lock, so any number of threads may submit
requests and drive steps; every state change of a generation happens inside a step, under that
lock. A fault in one sequence (its drafter raises, its policy refuses its parameters) fails that
sequence alone; a fault of the batched forward fails the sequences of that step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from specdec.acceptance import accept_batch
from specdec.batch import DraftBatch
from specdec.budget import DraftBudget, SequenceRecord
from specdec.draft import Draft
from specdec.errors import DraftError, GenerationError, InputError, SpecdecError
from specdec.protocols import AcceptancePolicy, DraftContext, Drafter, StepOutcome, Verifier
from specdec.sampling import SamplingParams, TorchRandom
from specdec.stats import GenerationStats

_EMPTY_DRAFT = Draft.empty()


@dataclass
class GenerationResult:
    tokens: list[int]  # generated token ids, prompt excluded, stop token included
    finish_reason: str  # "stop" (stop token or string), "length" (max_new_tokens or context full), "cancelled"
    stats: GenerationStats


class TokenView(Sequence[int]):
    """A read-only window on a sequence's committed tokens: drafters can read them (slices are
    copies) but cannot change what was committed. It always shows the current tokens."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: list[int]):
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index):
        return self._tokens[index]

    def __iter__(self):
        return iter(self._tokens)

    def __repr__(self) -> str:
        return f"TokenView({self._tokens!r})"


@dataclass(eq=False)
class SequenceHandle:
    """One submitted request: its chunks of new tokens as steps commit them, then its result.

    `chunks` fills as steps run; whoever drives the scheduler (`Generation`, `StepScheduler.run`,
    a server loop) reads it. `result` is set when the sequence finishes, `error` when it failed.
    """

    request_id: int
    prompt: list[int]
    params: SamplingParams
    max_draft_tokens: int | None  # None: the scheduler's budget; 0: no speculation for this request
    chunks: deque = field(default_factory=deque)  # lists of token ids, one per step
    result: GenerationResult | None = None
    error: BaseException | None = None
    # scheduler-side state
    drafter: Drafter | None = None
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    started: float = 0.0
    step: int = 0
    max_new: int = 0
    stop_ids: frozenset = frozenset()
    rng: TorchRandom | None = None
    cancelled: bool = False
    propose_seconds: float = 0.0  # in the drafter's propose calls (the budget weighs drafting by it)
    proposals: int = 0
    own_drafter: bool = False  # the request brought its drafter (submit(drafter=...)): not pooled

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


class StepScheduler:
    """Runs speculative generation for up to `max_batch_size` sequences per target forward.

    :param verifier: runs the target model and owns its slotted KV cache.
    :param policy: accepts or rejects draft tokens (one policy serves every sequence).
    :param drafters: drafter instances to start with; one serves one sequence at a time and is
        reused (after `start`) by later sequences.
    :param drafter_factory: builds another drafter when every instance is busy (None: at most
        `len(drafters)` sequences run at once; later requests wait in the queue).
    :param decode: token ids -> text, needed only for `stop_strings`.
    :param budget: sizes drafts by their verification cost at the current batch size (None: no limit).
    """

    def __init__(self, verifier: Verifier, policy: AcceptancePolicy, drafters: Sequence[Drafter] = (),
                 drafter_factory: Callable[[], Drafter] | None = None, *, max_batch_size: int = 8,
                 decode: Callable[[Sequence[int]], str] | None = None, budget: DraftBudget | None = None):
        if max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not drafters and drafter_factory is None:
            raise InputError("a StepScheduler needs drafters or a drafter_factory")
        self.verifier = verifier
        self.policy = policy
        self.decode = decode
        self.budget = budget
        self.max_batch_size = max_batch_size
        self._free_drafters: list[Drafter] = list(drafters)
        self._drafter_factory = drafter_factory
        self._waiting: deque[SequenceHandle] = deque()
        self._active: list[SequenceHandle] = []  # ordered by slot: _active[i].slot == i
        self._lock = threading.RLock()
        self._next_id = 0

    # -- requests ---------------------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], params: SamplingParams | None = None, *,
               max_draft_tokens: int | None = None, drafter: Drafter | None = None) -> SequenceHandle:
        """Queue a request; it joins the batch at the next step with a free slot.

        :param drafter: a drafter instance for this request alone (e.g. built with other params,
            `Pipeline.drafter_with`), started like a pooled one and dropped when the request ends;
            None: one of the scheduler's drafters.

        Bad input raises `InputError` here, before anything is queued.
        """
        params = params or SamplingParams()
        tokens = self._check_prompt(prompt)
        if params.stop_strings and self.decode is None:
            raise InputError("stop_strings need a tokenizer: pass decode= to SpeculativeDecoder (or build a Pipeline with a tokenizer)")
        if max_draft_tokens is not None and (isinstance(max_draft_tokens, bool) or not isinstance(max_draft_tokens, int)
                                             or max_draft_tokens < 0):
            raise InputError(f"max_draft_tokens must be an integer >= 0 (0 = no speculation), got {max_draft_tokens!r}")
        with self._lock:
            handle = SequenceHandle(self._next_id, tokens, params, max_draft_tokens,
                                    drafter=drafter, own_drafter=drafter is not None)
            self._next_id += 1
            self._waiting.append(handle)
        return handle

    def cancel(self, handle: SequenceHandle) -> None:
        """Stop a request: it finishes with reason "cancelled" and frees its slot at once."""
        with self._lock:
            handle.cancelled = True
            if handle.done:
                return
            if handle in self._waiting:
                self._waiting.remove(handle)
                handle.result = GenerationResult([], "cancelled", handle.stats)
            elif handle in self._active:
                self._finish(handle, "cancelled")

    @property
    def capacity(self) -> int:
        """Most sequences decoded at once: `max_batch_size`, or fewer drafters without a factory."""
        if self._drafter_factory is not None:
            return self.max_batch_size
        return min(self.max_batch_size, len(self._free_drafters) + len(self._active))

    def prepare(self, num_sequences: int, max_tokens: int | None = None) -> None:
        """Build drafters for up to `num_sequences` concurrent sequences now, the draft budget's
        cost model of every batch size up to it (`DraftBudget.prepare`), and when the verifier can
        (`HFVerifier.prepare`), its cache (and on CUDA its graphs) for sequences of up to
        `max_tokens` tokens (prompt + new): benchmarks and servers call this so that nothing is
        built, measured, grown or captured inside a timed step."""
        with self._lock:
            count = min(num_sequences, self.max_batch_size)
            wanted = count - len(self._active) - len(self._free_drafters)
            for _ in range(wanted if self._drafter_factory is not None else 0):
                self._free_drafters.append(self._drafter_factory())
            prepare_verifier = getattr(self.verifier, "prepare", None)
            if max_tokens is not None and prepare_verifier is not None:
                prepare_verifier(count, max_tokens)
            if self.budget is not None:
                self.budget.prepare(count)

    @property
    def num_active(self) -> int:
        return len(self._active)

    @property
    def num_waiting(self) -> int:
        """Submitted requests not yet admitted into the batch."""
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._active or self._waiting)

    def run(self, handles: Sequence[SequenceHandle] | None = None) -> None:
        """Step until the given handles (default: every request) are done."""
        while (any(not handle.done for handle in handles) if handles is not None else self.has_work):
            self.step()

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None,
                       **overrides) -> list[GenerationResult]:
        """Generate every prompt to completion, batched; results in prompt order.

        A request that fails raises its error after all others have finished.
        """
        params = params or SamplingParams()
        if overrides:
            params = params.replace(**overrides)
        handles = [self.submit(prompt, params) for prompt in prompts]
        self.run(handles)
        for handle in handles:
            if handle.error is not None:
                raise handle.error
        return [handle.result for handle in handles]

    def stream(self, handle: SequenceHandle) -> "Generation":
        """Iterate a submitted request's tokens; iterating drives the scheduler's steps."""
        return Generation(self, handle)

    # -- one step ---------------------------------------------------------------------------------

    def step(self) -> None:
        """Admit waiting requests, then run one draft -> verify -> accept -> commit step for all."""
        with self._lock:
            for handle in [handle for handle in (*self._waiting, *self._active) if handle.cancelled]:
                self.cancel(handle)
            self._admit()
            if not self._active:
                return
            self._step()

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.max_batch_size:
            handle = self._waiting[0]
            if not handle.own_drafter:
                if not self._free_drafters:
                    if self._drafter_factory is None:
                        break  # every drafter is busy: wait for a sequence to finish
                    self._free_drafters.append(self._drafter_factory())
                handle.drafter = self._free_drafters.pop()
            self._waiting.popleft()
            handle.slot = len(self._active)
            self._active.append(handle)
            try:
                self._start(handle)
            except Exception as error:  # noqa: BLE001 - a faulty drafter fails its own request only
                self._fail(handle, error)

    def _start(self, handle: SequenceHandle) -> None:
        verifier, params, prompt = self.verifier, handle.params, handle.prompt
        handle.started = time.perf_counter()
        handle.max_new = min(params.max_new_tokens, verifier.max_positions - len(prompt))
        handle.stop_ids = frozenset(verifier.eos_token_ids if params.stop_token_ids is None
                                    else params.stop_token_ids)
        handle.rng = TorchRandom(params.seed, verifier.device)
        verifier.start(len(prompt), handle.max_new, handle.slot)
        with handle.stats.clock.drafting():  # charged to the first step
            handle.drafter.start(prompt, params)
        handle.tokens = list(prompt)
        handle.pending = list(prompt)

    def _step(self) -> None:
        budgeted = self.budget is not None and len(self._active) > 1
        budget = None
        if budgeted:
            budget = self.budget.max_nodes(len(self._active), [
                _record(handle) for handle in self._active if handle.max_draft_tokens != 0])
        drafts = self._draft_all(budget)
        active = list(self._active)
        if not active:
            return
        if budgeted and len(active) > 1:
            self._trim_drafts(drafts, active)
        layers = tuple(sorted({layer for handle in active for layer in handle.drafter.hidden_state_layers}))
        batch = DraftBatch(tuple(drafts[handle.request_id] for handle in active),
                           tuple(tuple(handle.pending) for handle in active),
                           tuple(handle.slot for handle in active), layers)
        drafted = time.perf_counter()
        try:
            outputs = self.verifier.verify_batch(batch)
        except Exception as error:  # noqa: BLE001 - a failed forward leaves every slot of the step unusable
            for handle in active:
                self._fail(handle, error)
            return
        acceptances = accept_batch(self.policy, [output.logits for output in outputs], batch,
                                   [handle.params for handle in active], [handle.rng for handle in active])
        for index, (draft, acceptance) in enumerate(zip(batch.drafts, acceptances)):
            if not isinstance(acceptance, BaseException):
                try:
                    self._check_acceptance(acceptance, draft)
                except DraftError as error:
                    acceptances[index] = error
        paths = [() if isinstance(acceptance, BaseException) else acceptance.path for acceptance in acceptances]
        self.verifier.commit_batch(batch, paths)
        verify_seconds = (time.perf_counter() - drafted) / len(active)  # the forward is shared
        for handle, draft, output, acceptance in zip(active, batch.drafts, outputs, acceptances):
            if isinstance(acceptance, BaseException):
                self._fail(handle, acceptance)
                continue
            handle.stats.clock.verify_seconds += verify_seconds
            self._advance(handle, draft, output, acceptance)

    def _trim_drafts(self, drafts: dict[int, Draft], active: list[SequenceHandle]) -> None:
        """Cut the step's drafts to the size the budget finds worth verifying, now that it is known
        who drafted how much (`DraftBudget.trimmed_size`)."""
        size = self.budget.trimmed_size(len(active), [
            (_record(handle), drafts[handle.request_id].num_nodes) for handle in active])
        for handle in active:
            draft = drafts[handle.request_id]
            if draft.num_nodes > size:
                drafts[handle.request_id] = draft.subtree(range(size))  # parents precede children

    def _draft_all(self, budget: int | None) -> dict[int, Draft]:
        """Every active sequence's checked draft, by request id; drafting time goes on its clock.

        Drafters of one class that define `propose_batch` are asked together (one call for the
        group, so a model-based drafter can batch its own forwards); the rest one by one. A
        drafter that raises fails its own sequence (a batched call: the sequences of its group).
        """
        drafts: dict[int, Draft] = {}
        groups: dict[type, list[tuple[SequenceHandle, DraftContext]]] = {}
        for handle in list(self._active):
            context = self._context(handle, budget)
            if context is None:
                drafts[handle.request_id] = _EMPTY_DRAFT
            elif hasattr(type(handle.drafter), "propose_batch"):
                groups.setdefault(type(handle.drafter), []).append((handle, context))
            else:
                try:
                    clock = handle.stats.clock
                    before = clock.draft_seconds
                    with clock.drafting():
                        draft = handle.drafter.propose(context)
                    handle.propose_seconds += clock.draft_seconds - before
                    handle.proposals += 1
                    drafts[handle.request_id] = self._check_draft(handle.drafter, draft, context)
                except Exception as error:  # noqa: BLE001 - the drafter's fault fails its own sequence only
                    self._fail(handle, error)
        for kind, members in groups.items():
            tic = time.perf_counter()
            try:
                proposed = kind.propose_batch([handle.drafter for handle, _ in members],
                                              [context for _, context in members])
                if len(proposed) != len(members):
                    raise DraftError(f"{kind.__name__}.propose_batch returned {len(proposed)} drafts for "
                                     f"{len(members)} sequences")
            except Exception as error:  # noqa: BLE001 - a failed batched call fails its group
                for handle, _ in members:
                    self._fail(handle, error)
                continue
            share = (time.perf_counter() - tic) / len(members)
            for (handle, context), draft in zip(members, proposed):
                handle.stats.clock.draft_seconds += share
                handle.propose_seconds += share
                handle.proposals += 1
                try:
                    drafts[handle.request_id] = self._check_draft(handle.drafter, draft, context)
                except DraftError as error:
                    self._fail(handle, error)
        return drafts

    def _context(self, handle: SequenceHandle, budget: int | None) -> DraftContext | None:
        """What the sequence's drafter sees this step; None when it must not draft."""
        remaining = handle.max_new - (len(handle.tokens) - len(handle.prompt))
        limit = budget if handle.max_draft_tokens is None else (
            handle.max_draft_tokens if budget is None else min(budget, handle.max_draft_tokens))
        if remaining <= 1 or limit == 0:
            return None
        return DraftContext(TokenView(handle.tokens), len(handle.prompt), handle.params, remaining - 1,
                            handle.rng, handle.step, max_nodes=limit, slot=handle.slot)

    def _advance(self, handle: SequenceHandle, draft: Draft, output, acceptance) -> None:
        """Commit one sequence's step: stops, tokens, the drafter's update, statistics, its chunk."""
        new = [*draft.path_tokens(acceptance.path), acceptance.next_token]
        remaining = handle.max_new - (len(handle.tokens) - len(handle.prompt))
        new, finish = self._apply_stops(new, handle, remaining)
        num_pending = len(handle.pending)
        handle.tokens.extend(new)
        if finish is None:
            drafter = handle.drafter
            outcome = StepOutcome.of(
                draft, acceptance, TokenView(handle.tokens),
                hidden_states={layer: output.hidden_states[layer] for layer in drafter.hidden_state_layers},
                num_pending=num_pending, aux_logits=output.aux_logits,
                logits=output.logits if getattr(drafter, "wants_logits", False) else None)
            try:
                with handle.stats.clock.drafting():
                    drafter.observe(outcome)
            except Exception as error:  # noqa: BLE001 - the drafter's fault fails its own sequence only
                self._fail(handle, error)
                return
        handle.stats.record_step(draft_tokens=draft.num_nodes, draft_depth=draft.max_depth,
                                 accepted=len(acceptance.path), new_tokens=len(new))
        handle.stats.wall_seconds = time.perf_counter() - handle.started
        handle.chunks.append(new)
        handle.step += 1
        if finish is not None:
            self._finish(handle, finish)
        else:
            handle.pending = [acceptance.next_token]

    # -- leaving the batch ------------------------------------------------------------------------

    def _finish(self, handle: SequenceHandle, reason: str) -> None:
        handle.stats.wall_seconds = time.perf_counter() - handle.started
        if self.budget is not None and handle.max_draft_tokens != 0:
            self.budget.retire(_record(handle))
        self._release(handle)
        handle.result = GenerationResult(handle.tokens[len(handle.prompt):], reason, handle.stats)

    def _fail(self, handle: SequenceHandle, error: BaseException) -> None:
        if not isinstance(error, SpecdecError):
            # an exception from inside a component reaches the user as a specdec error, cause chained
            wrapped = GenerationError(f"request {handle.request_id} failed: {type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        self._release(handle)
        handle.error = error

    def _release(self, handle: SequenceHandle) -> None:
        """Free the sequence's slot (the last active sequence moves into it) and its drafter."""
        if handle not in self._active:
            return
        slot = handle.slot
        last = self._active.pop()
        if last is not handle:
            self._active[slot] = last
            self.verifier.move_slot(last.slot, slot)
            last.slot = slot
        handle.slot = -1
        if handle.drafter is not None and not handle.own_drafter:
            self._free_drafters.append(handle.drafter)

    # -- checks -----------------------------------------------------------------------------------

    def _check_prompt(self, prompt: Sequence[int]) -> list[int]:
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.reshape(-1).tolist()
        if isinstance(prompt, (str, bytes, bytearray)):
            raise InputError(f"a prompt here is a list of token ids, got {type(prompt).__name__}; "
                             f"encode text with the tokenizer (Pipeline.generate does)")
        try:
            tokens = [_token_id(token) for token in prompt]
        except TypeError as error:
            raise InputError(f"a prompt is a list of integer token ids: {error}") from None
        if not tokens:
            raise InputError("the prompt is empty: give at least one token (for chat models, a "
                             "chat template usually adds some)")
        vocab = self.verifier.vocab_size
        bad = [token for token in tokens if not 0 <= token < vocab]
        if bad:
            raise InputError(f"prompt token ids {bad[:5]} are outside the model vocabulary [0, {vocab})")
        if len(tokens) >= self.verifier.max_positions:
            raise InputError(
                f"the prompt has {len(tokens)} tokens but the model attends over at most "
                f"{self.verifier.max_positions}; shorten the prompt")
        return tokens

    def _check_draft(self, drafter: Drafter, draft: Draft, context: DraftContext) -> Draft:
        """Refuse drafts that cannot be verified; trim drafts deeper or larger than the budget."""
        max_depth, max_nodes, root_position = context.max_depth, context.max_nodes, len(context.tokens) - 1
        name = type(drafter).__name__
        if not isinstance(draft, Draft):
            raise DraftError(f"{name}.propose returned {type(draft).__name__}, expected a specdec.Draft")
        if draft.num_nodes == 0 and draft.num_aux == 0:
            return draft
        if draft.max_depth > max_depth:
            draft = draft.truncated(max_depth)
        if max_nodes is not None and draft.num_nodes > max_nodes:
            draft = draft.subtree(range(max_nodes))  # parents precede children: a valid tree
        vocab = self.verifier.vocab_size
        for label, ids in (("node", draft.tokens), ("aux row", None if draft.aux is None else draft.aux.tokens)):
            if ids is None or ids.numel() == 0:
                continue
            bad = ((ids < 0) | (ids >= vocab)).nonzero()  # one host sync, before the verify forward
            if bad.numel():
                index = int(bad[0])
                raise DraftError(f"{name} proposed token id {int(ids[index])} at {label} {index}, "
                                 f"outside the target vocabulary [0, {vocab})")
        if draft.aux is not None and draft.aux.position_offsets.numel():
            furthest = root_position + int(draft.aux.position_offsets.max())
            if furthest >= self.verifier.max_positions:
                raise DraftError(f"{name} placed an aux row at position {furthest}, beyond the model's "
                                 f"{self.verifier.max_positions} positions")
        if draft.q is not None and draft.q.shape[1] != vocab:
            raise DraftError(
                f"{name} reported q over {draft.q.shape[1]} tokens but the target vocabulary has "
                f"{vocab}: draft and target must share one vocabulary")
        return draft

    def _check_acceptance(self, acceptance, draft: Draft) -> None:
        """A policy's path must walk down the tree from the root; its token must be a real id."""
        parent = -1
        for node in acceptance.path:
            if not 0 <= node < draft.num_nodes or draft.parents[node] != parent:
                raise DraftError(f"{type(self.policy).__name__} accepted path {list(acceptance.path)}, "
                                 f"which is not a path down the draft tree from the root")
            parent = node
        if not 0 <= acceptance.next_token < self.verifier.vocab_size:
            raise DraftError(f"{type(self.policy).__name__} emitted token id {acceptance.next_token}, outside "
                             f"the target vocabulary [0, {self.verifier.vocab_size})")

    def _apply_stops(self, new: list[int], handle: SequenceHandle, remaining: int) -> tuple[list[int], str | None]:
        """Cut this step's tokens at the first stop token, stop string or length limit."""
        finish = None
        params = handle.params
        for index, token in enumerate(new):
            if token in handle.stop_ids:
                new, finish = new[: index + 1], "stop"
                break
        if params.stop_strings:
            generated = handle.tokens[len(handle.prompt):]
            if any(stop in self.decode(generated + new) for stop in params.stop_strings):
                for index in range(len(new)):
                    text = self.decode(generated + new[: index + 1])
                    if any(stop in text for stop in params.stop_strings):
                        new, finish = new[: index + 1], "stop"
                        break
        if len(new) >= remaining:
            new, finish = new[:remaining], finish or "length"
        return new, finish


class Generation:
    """Iterator over one request's generated token ids as they are committed; `result` once it
    is exhausted. Iterating drives the scheduler (other requests in the batch advance too)."""

    def __init__(self, scheduler: StepScheduler, handle: SequenceHandle):
        self._scheduler = scheduler
        self.handle = handle
        self._buffer: list[int] = []
        self.result: GenerationResult | None = None

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> int:
        while not self._buffer:
            self._buffer = self._next_chunk()
        return self._buffer.pop(0)

    def chunks(self) -> Iterator[list[int]]:
        """Iterate step by step instead: each item is the tokens one step committed."""
        if self._buffer:
            chunk, self._buffer = self._buffer, []
            yield chunk
        while True:
            try:
                yield self._next_chunk()
            except StopIteration:
                return

    def close(self) -> None:
        """Abandon the generation: its request is cancelled and its slot freed."""
        self._scheduler.cancel(self.handle)

    def _next_chunk(self) -> list[int]:
        handle = self.handle
        while not handle.chunks:
            if handle.error is not None:
                raise handle.error
            if handle.result is not None:
                self.result = handle.result
                raise StopIteration
            self._scheduler.step()
        return handle.chunks.popleft()

    def __del__(self):
        # An abandoned stream must not hold a slot forever. Only a flag here: a finalizer may run
        # inside a step, so the scheduler drops flagged requests itself at the next step.
        self.handle.cancelled = True


def _record(handle: SequenceHandle) -> SequenceRecord:
    return SequenceRecord(handle.stats.drafted_at_depth, handle.stats.accepted_at_depth,
                          handle.propose_seconds, handle.proposals)


def _token_id(token) -> int:
    if isinstance(token, bool) or not isinstance(token, (int, torch.Tensor)) and not hasattr(token, "__index__"):
        raise TypeError(f"{token!r} is not an integer token id")
    return int(token)
