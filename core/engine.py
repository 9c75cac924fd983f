"""The step engine: draft -> verify -> accept -> commit -> tell the drafter, until a stop.

Plain autoregressive decoding is this same loop with the `none` drafter (every draft empty),
which makes it the reference every test and benchmark compares against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from specdec.draft import Draft
from specdec.errors import DraftError, InputError
from specdec.protocols import AcceptancePolicy, DraftContext, Drafter, StepOutcome, Verifier
from specdec.sampling import SamplingParams, TorchRandom
from specdec.stats import GenerationStats

_EMPTY_DRAFT = Draft.empty()


@dataclass
class GenerationResult:
    tokens: list[int]  # generated token ids, prompt excluded, stop token included
    finish_reason: str  # "stop" (stop token or string) or "length" (max_new_tokens or context full)
    stats: GenerationStats


class TokenView(Sequence[int]):
    """A read-only window on the engine's committed tokens: drafters can read them (slices are
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


class Generation:
    """Iterator over generated token ids as they are committed; `result` once it is exhausted."""

    def __init__(self, steps: Iterator[list[int]]):
        self._steps = steps
        self._buffer: list[int] = []
        self.result: GenerationResult | None = None

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._steps)
            except StopIteration as stop:
                self.result = stop.value
                raise
        return self._buffer.pop(0)

    def chunks(self) -> Iterator[list[int]]:
        """Iterate step by step instead: each item is the tokens one step committed."""
        if self._buffer:
            chunk, self._buffer = self._buffer, []
            yield chunk
        while True:
            try:
                yield next(self._steps)
            except StopIteration as stop:
                self.result = stop.value
                return


class SpeculativeDecoder:
    """Runs speculative generation for one sequence at a time.

    :param verifier: runs the target model and owns its cache.
    :param drafter: proposes drafts (the `none` drafter gives plain decoding).
    :param policy: accepts or rejects draft tokens.
    :param decode: token ids -> text, needed only for `stop_strings`.
    """

    def __init__(self, verifier: Verifier, drafter: Drafter, policy: AcceptancePolicy,
                 decode: Callable[[Sequence[int]], str] | None = None):
        self.verifier = verifier
        self.drafter = drafter
        self.policy = policy
        self.decode = decode
        self._active: object | None = None  # the generation that owns the verifier and drafter state

    def generate(self, prompt: Sequence[int], params: SamplingParams | None = None,
                 **overrides) -> GenerationResult:
        """Generate to completion and return the tokens with the run's statistics."""
        generation = self.stream(prompt, params, **overrides)
        for _ in generation.chunks():
            pass
        assert generation.result is not None
        return generation.result

    def stream(self, prompt: Sequence[int], params: SamplingParams | None = None,
               **overrides) -> Generation:
        """Start a generation; iterate the result for tokens as they are committed."""
        params = params or SamplingParams()
        if overrides:
            params = params.replace(**overrides)
        prompt = self._check_prompt(prompt)
        if params.stop_strings and self.decode is None:
            raise InputError("stop_strings need a tokenizer: pass decode= to SpeculativeDecoder")
        return Generation(self._steps(prompt, params))

    def _check_prompt(self, prompt: Sequence[int]) -> list[int]:
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.reshape(-1).tolist()
        tokens = [int(token) for token in prompt]
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

    def _steps(self, prompt: list[int], params: SamplingParams) -> Iterator[list[int]]:
        verifier, drafter, policy = self.verifier, self.drafter, self.policy
        started = time.perf_counter()
        owner = self._active = object()
        stats = GenerationStats()
        max_new = min(params.max_new_tokens, verifier.max_positions - len(prompt))
        stop_ids = frozenset(verifier.eos_token_ids if params.stop_token_ids is None
                             else params.stop_token_ids)
        rng = TorchRandom(params.seed, verifier.device)
        layers = tuple(drafter.hidden_state_layers)
        verifier.start(len(prompt), max_new)
        tic = time.perf_counter()
        drafter.start(prompt, params)
        carried_draft_seconds = time.perf_counter() - tic

        tokens = list(prompt)
        view = TokenView(tokens)
        pending = list(prompt)
        step = 0
        while True:
            if self._active is not owner:
                raise InputError("another generation started on this decoder while this one was "
                                 "streaming; they share one KV cache: finish one stream before starting "
                                 "the next, or build one decoder (pipeline) per concurrent request")
            remaining = max_new - (len(tokens) - len(prompt))
            tic = time.perf_counter()
            if remaining > 1:
                context = DraftContext(view, len(prompt), params, remaining - 1, rng, step)
                draft = self._check_draft(drafter.propose(context), remaining - 1, len(tokens) - 1)
            else:
                draft = _EMPTY_DRAFT
            drafted = time.perf_counter()

            verified = verifier.verify(pending, draft, layers)
            acceptance = policy.accept(verified.logits, draft, params, rng)
            self._check_acceptance(acceptance, draft)
            verifier.commit(len(pending), acceptance.path)
            committed_at = time.perf_counter()

            accepted = tuple(draft.tokens[list(acceptance.path)].tolist()) if acceptance.path else ()
            new = list(accepted) + [acceptance.token]
            new, finish = self._apply_stops(new, tokens, len(prompt), remaining, stop_ids, params)
            tokens.extend(new)

            draft_seconds = drafted - tic + carried_draft_seconds
            if finish is None:
                tic = time.perf_counter()
                drafter.observe(StepOutcome(
                    draft=draft,
                    path=acceptance.path,
                    accepted_tokens=accepted,
                    next_token=acceptance.token,
                    tokens=view,
                    hidden_states=_rows(verified.hidden_states, len(pending), acceptance.path),
                    aux_logits=verified.aux_logits,
                ))
                draft_seconds += time.perf_counter() - tic
            carried_draft_seconds = 0.0
            stats.record_step(
                draft_tokens=draft.num_nodes, draft_depth=draft.max_depth,
                accepted=len(acceptance.path), committed=len(new),
                draft_seconds=draft_seconds, verify_seconds=committed_at - drafted)
            stats.wall_seconds = time.perf_counter() - started
            yield new
            if finish is not None:
                return GenerationResult(tokens[len(prompt):], finish, stats)
            pending = [acceptance.token]
            step += 1

    def _check_draft(self, draft: Draft, max_depth: int, root_position: int) -> Draft:
        """Refuse drafts that cannot be verified; trim drafts deeper than the budget."""
        name = type(self.drafter).__name__
        if not isinstance(draft, Draft):
            raise DraftError(f"{name}.propose returned {type(draft).__name__}, expected a specdec.Draft")
        if draft.num_nodes == 0 and draft.num_aux == 0:
            return draft
        if draft.max_depth > max_depth:
            draft = draft.truncated(max_depth)
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
        if not 0 <= acceptance.token < self.verifier.vocab_size:
            raise DraftError(f"{type(self.policy).__name__} emitted token id {acceptance.token}, outside "
                             f"the target vocabulary [0, {self.verifier.vocab_size})")

    def _apply_stops(self, new: list[int], tokens: list[int], prompt_length: int, remaining: int,
                     stop_ids: frozenset[int], params: SamplingParams) -> tuple[list[int], str | None]:
        """Cut this step's tokens at the first stop token, stop string or length limit."""
        finish = None
        for index, token in enumerate(new):
            if token in stop_ids:
                new, finish = new[: index + 1], "stop"
                break
        if params.stop_strings:
            generated = tokens[prompt_length:]
            if any(stop in self.decode(generated + new) for stop in params.stop_strings):
                for index in range(len(new)):
                    text = self.decode(generated + new[: index + 1])
                    if any(stop in text for stop in params.stop_strings):
                        new, finish = new[: index + 1], "stop"
                        break
        if len(new) >= remaining:
            new, finish = new[:remaining], finish or "length"
        return new, finish


def _rows(hidden_states: dict[int, torch.Tensor], num_pending: int,
          path: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Hidden states of the positions a step kept: the pending tokens, then the accepted nodes."""
    if not hidden_states:
        return {}
    if list(path) == list(range(len(path))):
        return {layer: states[: num_pending + len(path)] for layer, states in hidden_states.items()}
    rows = list(range(num_pending)) + [num_pending + node for node in path]
    return {layer: states[rows] for layer, states in hidden_states.items()}
