"""The three roles of a speculative step and the records they exchange.

One step: the `Drafter` proposes a `Draft` from a `DraftContext`; the `Verifier` runs the target
once over the pending tokens and the draft and returns a `VerifyOutput`; the `AcceptancePolicy`
turns the target logits into an `Acceptance` (accepted path + one token from the target); the
verifier keeps only the accepted path in its cache; the drafter hears the `StepOutcome`.

Components are plain objects with these methods; the engine calls them directly (plugins are
involved only when a pipeline is built, never inside the loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch

from specdec.batch import DraftBatch
from specdec.draft import Draft
from specdec.sampling import RandomSource, SamplingParams


@dataclass(frozen=True, eq=False)
class DraftContext:
    """What a drafter may look at when proposing."""

    tokens: Sequence[int]  # all committed tokens (prompt + generated): a read-only live view
    num_prompt_tokens: int
    params: SamplingParams
    max_depth: int  # the draft must not be deeper than this (>= 1)
    rng: RandomSource  # draw draft samples from this, so seeded runs are reproducible
    step: int  # 0 for the first step of a generation
    # Most draft nodes that pay for their verification at the current batch size (None = no
    # limit). The scheduler keeps the first `max_nodes` nodes of a larger draft; a drafter that
    # reads it can choose its best nodes itself.
    max_nodes: int | None = None
    # The verifier cache slot that holds this sequence during this step. A self-drafting drafter
    # that shares the target's cache (`BuildContext.verifier.cache`) reads and writes there; it
    # may differ from the previous step's (the scheduler moves sequences when others finish).
    slot: int = 0


@dataclass(frozen=True, eq=False)
class VerifyOutput:
    """The target's view of one draft, from one forward pass."""

    logits: torch.Tensor  # [1 + T, V] float32: row 0 = root, row i + 1 = draft node i
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [P + T, H]
    aux_logits: torch.Tensor | None = None  # [A, V] for `Draft.aux` rows


@dataclass(frozen=True)
class Acceptance:
    """The policy's verdict.

    `path` lists the accepted draft nodes (each the child of the previous, starting below the
    root); `next_token` is the target's own token after them: the correction token when a draft
    token was rejected, the bonus token when the path ends at a leaf or the draft was empty (the
    same name as `StepOutcome.next_token`, where it travels on).
    """

    path: tuple[int, ...]
    next_token: int

    @property
    def token(self) -> int:
        """Deprecated name of `next_token` (specdec 0.1 called the field `token`)."""
        return self.next_token


@dataclass(frozen=True, eq=False)
class StepOutcome:
    """What a drafter hears after verification, to keep its state in sync."""

    draft: Draft
    path: tuple[int, ...]  # accepted node indices
    accepted_tokens: tuple[int, ...]  # their tokens
    next_token: int  # the target's token after them, now the root of the next draft
    tokens: Sequence[int]  # all committed tokens after this step (a read-only live view)
    # layer -> [P + len(path), H]: target hidden states at the positions this step added to the
    # target cache: the P tokens that were pending (the previous root, or the prompt on the first
    # step), then the accepted nodes. Only the layers the drafter asked for.
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)
    aux_logits: torch.Tensor | None = None  # [A, V] target logits of the draft's aux rows
    # [1 + T, V] float32 target logits of this step's root (row 0) and draft nodes (row i + 1),
    # only for drafters that set `wants_logits = True` (Jacobi decoding, Token Recycling).
    logits: torch.Tensor | None = None

    @classmethod
    def of(cls, draft: Draft, acceptance: "Acceptance", tokens: Sequence[int], *,
           hidden_states: dict[int, torch.Tensor] | None = None, num_pending: int = 1,
           aux_logits: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> "StepOutcome":
        """The outcome of verifying `draft`, as the engine hands it to the drafter.

        :param tokens: every committed token after the step (ends with `acceptance.next_token`).
        :param hidden_states: layer -> `[P + T, H]` states of the verification forward's rows
            (the P pending tokens, then the T draft nodes); the outcome keeps the rows of the
            pending tokens and of the accepted path.
        :param num_pending: P.
        """
        path = tuple(acceptance.path)
        return cls(draft, path, draft.path_tokens(path), acceptance.next_token, tokens,
                   _kept_rows(hidden_states or {}, num_pending, path), aux_logits, logits)


def _kept_rows(hidden_states: dict[int, torch.Tensor], num_pending: int,
               path: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Hidden states of the positions a step kept: the pending tokens, then the accepted nodes."""
    if not hidden_states:
        return {}
    if list(path) == list(range(len(path))):  # a chain prefix: a slice, no copy
        return {layer: states[: num_pending + len(path)] for layer, states in hidden_states.items()}
    rows = list(range(num_pending)) + [num_pending + node for node in path]
    return {layer: states[rows] for layer, states in hidden_states.items()}


@runtime_checkable
class Drafter(Protocol):
    """Proposes draft trees. One instance serves one sequence at a time.

    Heavy resources (weights) are loaded by the component factory and may be shared between
    instances; per-sequence state (draft KV caches, n-gram indexes) lives on the instance and
    is reset by `start`.
    """

    #: Hugging Face `hidden_states` indices of the target whose states `observe` should receive
    #: (for example `(-1,)`, the final normed state, for Medusa heads). Empty = none.
    hidden_state_layers: tuple[int, ...]
    #: True when `observe` should receive the verification logits (`StepOutcome.logits`).
    #: Optional attribute: read with a default of False.
    wants_logits: bool

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        """A new generation begins with this prompt."""
        ...

    def propose(self, context: DraftContext) -> Draft:
        """Return a draft no deeper than `context.max_depth` (an empty draft is allowed)."""
        ...

    # Optional: a classmethod `propose_batch(drafters, contexts) -> list[Draft]` that proposes for
    # several instances of the class at once (one call per step for all sequences whose drafter
    # is of this class), so a model-based drafter can batch its own forwards. Without it the
    # scheduler calls `propose` per sequence.

    def observe(self, outcome: StepOutcome) -> None:
        """The target verified a draft; update per-sequence state.

        Inside a composite drafter (`fallback`, `merge`), `outcome.draft` may be another
        drafter's draft: compare it with the draft you returned (`is`) before trusting
        `outcome.path`.
        """
        ...


class BaseDrafter:
    """Defaults for the optional parts of the `Drafter` protocol: subclass and write `propose`."""

    hidden_state_layers: tuple[int, ...] = ()
    wants_logits: bool = False

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        pass

    def propose(self, context: DraftContext) -> Draft:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, outcome: StepOutcome) -> None:
        pass


@runtime_checkable
class Verifier(Protocol):
    """Runs the target model and owns its KV cache, one slot per sequence of a batch.

    The scheduler keeps its B active sequences in slots `0..B-1` and calls `verify_batch` once
    per step. `verify` and `commit` are the batch of one in slot 0 (tools and tests use them).
    """

    vocab_size: int  # columns of the target's logits
    max_positions: int  # longest sequence the target can attend over
    device: torch.device  # where logits live; the random source is created there
    eos_token_ids: tuple[int, ...]  # default stop tokens

    def start(self, prompt_length: int, max_new_tokens: int, slot: int = 0) -> None:
        """Empty `slot` for a new sequence of at most this many tokens."""
        ...

    def verify_batch(self, batch: DraftBatch) -> list[VerifyOutput]:
        """One target forward over every sequence's pending tokens, then its draft tree.

        `batch.pending[b]` are committed tokens slot `batch.slots[b]` has not seen (the prompt
        on a sequence's first step, the previous step's target token afterwards); the last of
        them is the root of `batch.drafts[b]`. Returns one `VerifyOutput` per sequence.
        """
        ...

    def commit_batch(self, batch: DraftBatch, paths: Sequence[Sequence[int]]) -> None:
        """Per sequence, keep the pending tokens and the accepted draft nodes, drop the rest."""
        ...

    def move_slot(self, source: int, destination: int) -> None:
        """Move a sequence's cache to another (free) slot."""
        ...

    def verify(self, pending: Sequence[int], draft: Draft,
               hidden_state_layers: Sequence[int] = ()) -> VerifyOutput:
        """`verify_batch` for one sequence in slot 0."""
        ...

    def commit(self, num_pending: int, path: Sequence[int]) -> None:
        """`commit_batch` for one sequence in slot 0."""
        ...


@runtime_checkable
class AcceptancePolicy(Protocol):
    """Decides which draft tokens to keep, given the target's logits."""

    #: True when output is distributed exactly as plain sampling from the target.
    lossless: bool

    def accept(self, logits: torch.Tensor, draft: Draft, params: SamplingParams,
               rng: RandomSource) -> Acceptance:
        """`logits`: `[1 + T, V]` target logits by row (row 0 = root, row i + 1 = node i).

        A policy may also offer `accept_batch(logits, batch, params, rngs)` (lists per sequence
        of a `DraftBatch`, returning an `Acceptance` or the exception per sequence) to work on a
        whole step at once; `specdec.acceptance.accept_batch` falls back to calling `accept`.
        """
        ...
