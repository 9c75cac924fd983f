"""Built-in acceptance policies: `greedy` and `rejection` (lossless speculative sampling on trees).

Vocabulary (see `specdec.draft` for rows and paths):
- accepted tokens: draft tokens the policy keeps, a path from the root down the tree;
- correction token: drawn from the residual distribution where the walk stops at a rejection;
- bonus token: drawn from the target distribution at a leaf whose whole path was accepted.
Every step thus commits the accepted tokens plus exactly one target token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from specdec.batch import DraftBatch
from specdec.draft import Draft
from specdec.errors import DraftError, InputError
from specdec.protocols import Acceptance
from specdec.sampling import RandomSource, SamplingParams, warp_logits


def greedy_walk(logits: torch.Tensor, draft: Draft) -> Acceptance:
    """Follow the target's argmax down the tree: keep a child whose token is the argmax at its
    parent; stop at the first row where no child matches and emit that row's argmax."""
    return argmax_walk(logits.argmax(dim=-1).tolist(), draft)


def argmax_walk(best: Sequence[int], draft: Draft) -> Acceptance:
    """`greedy_walk` given the target's argmax of every row (`[1 + T]`: the root's, then each
    node's): also the walk of a known greedy output (`specdec.testing.replay_greedy`)."""
    if draft.num_nodes == 0:
        return Acceptance((), best[0])
    tokens = draft.tokens.tolist()
    path: list[int] = []
    row = 0
    while True:
        target = best[row]
        for child in draft.children[row]:
            if tokens[child] == target:
                path.append(child)
                row = child + 1
                break
        else:
            return Acceptance(tuple(path), target)


class _BatchedGreedy:
    """`accept_batch` for the built-in policies: the greedy sequences of a step share one argmax
    over all their rows (one device transfer for the batch); the others go through `accept`."""

    def accept_batch(self, logits: Sequence[torch.Tensor], batch: DraftBatch, params: Sequence[SamplingParams],
                     rngs: Sequence[RandomSource]) -> list[Acceptance | Exception]:
        greedy = [index for index, row_params in enumerate(params) if row_params.greedy]
        best: dict[int, list[int]] = {}
        if len(greedy) > 1:
            flat = torch.cat([logits[index] for index in greedy]).argmax(dim=-1).tolist()
            offset = 0
            for index in greedy:
                best[index], offset = flat[offset: offset + logits[index].shape[0]], offset + logits[index].shape[0]
        results: list[Acceptance | Exception] = []
        for index, (row_logits, draft, row_params, rng) in enumerate(zip(logits, batch.drafts, params, rngs)):
            try:
                results.append(argmax_walk(best[index], draft) if index in best
                               else self.accept(row_logits, draft, row_params, rng))
            except Exception as error:  # noqa: BLE001 - handed back per sequence
                results.append(error)
        return results


class GreedyAcceptance(_BatchedGreedy):
    """Exact argmax matching; the output equals plain greedy decoding token for token."""

    lossless = True

    def accept(self, logits: torch.Tensor, draft: Draft, params: SamplingParams,
               rng: RandomSource) -> Acceptance:
        if not params.greedy:
            raise InputError(
                f"the 'greedy' acceptance policy decodes deterministically but temperature is "
                f"{params.temperature}; set temperature to 0 or use the 'rejection' policy, which "
                f"samples losslessly at any temperature")
        return greedy_walk(logits, draft)


def _residual(p: torch.Tensor, q_row: torch.Tensor | None, token: int) -> torch.Tensor:
    """norm(max(0, p - q)) after rejecting `token`; q_row None means q is a point mass at `token`."""
    if q_row is None:
        residual = p.clone()
        residual[token] = 0.0
    else:
        residual = (p - q_row).clamp_(min=0.0)
    total = residual.sum()
    if total <= 0:
        # Only reachable through rounding: a rejection has probability 0 when p <= q everywhere.
        return p
    return residual / total


def _draft_prob(q: torch.Tensor, node: int, token: int) -> torch.Tensor:
    value = q[node, token]
    if value <= 0:
        raise DraftError(
            f"draft node {node} has token {token}, which has probability {float(value)} under the "
            f"q the drafter reported; q must be the exact distribution the token was drawn from")
    return value


class RejectionSampling(_BatchedGreedy):
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023), generalised to trees as
    multi-candidate rejection (SpecInfer): lossless at any temperature, top-k and top-p.

    At each accepted node the children are tried in draft order. A child with token x drawn
    from q is accepted with probability min(1, P(x) / q(x)), where P starts as the target
    distribution p at that node; after a rejection P becomes norm(max(0, P - q)) and the next
    sibling is tried against it. A deterministic child (no q) is a point mass: accepted with
    probability P(x), and a rejection zeroes P(x). When every child is rejected the correction
    token is drawn from P; when the walk reaches a leaf, the bonus token is drawn from p there.
    At temperature 0 this is exactly `greedy_walk`.
    """

    lossless = True

    def accept(self, logits: torch.Tensor, draft: Draft, params: SamplingParams,
               rng: RandomSource) -> Acceptance:
        if params.greedy:
            return greedy_walk(logits, draft)
        probs = warp_logits(logits, params)  # [1 + T, V]
        if draft.num_nodes == 0:
            return Acceptance((), rng.categorical(probs[0]))
        q = None if draft.q is None else draft.q.to(probs.device, torch.float32)
        if draft.is_chain:
            return self._accept_chain(probs, draft, q, rng)
        return self._accept_tree(probs, draft, q, rng)

    def _accept_chain(self, probs: torch.Tensor, draft: Draft, q: torch.Tensor | None,
                      rng: RandomSource) -> Acceptance:
        count = draft.num_nodes
        tokens = draft.tokens.to(probs.device)
        rows = torch.arange(count, device=probs.device)
        ratio = probs[rows, tokens]  # p at each node's parent row, for the node's token
        if q is not None:
            q_tokens = q[rows, tokens]
            if bool((q_tokens <= 0).any()):
                node = int((q_tokens <= 0).nonzero()[0])
                _draft_prob(q, node, int(tokens[node]))
            ratio = (ratio / q_tokens).clamp_(max=1.0)
        coins = rng.bernoulli(ratio)
        accepted = coins.index(False) if False in coins else count
        if accepted == count:
            return Acceptance(tuple(range(count)), rng.categorical(probs[count]))
        token = int(tokens[accepted])
        residual = _residual(probs[accepted], None if q is None else q[accepted], token)
        return Acceptance(tuple(range(accepted)), rng.categorical(residual))

    def _accept_tree(self, probs: torch.Tensor, draft: Draft, q: torch.Tensor | None,
                     rng: RandomSource) -> Acceptance:
        tokens = draft.tokens.tolist()
        path: list[int] = []
        row = 0
        while True:
            children = draft.children[row]
            if not children:
                return Acceptance(tuple(path), rng.categorical(probs[row]))
            remaining = probs[row]
            for child in children:
                token = tokens[child]
                if q is None:
                    chance = remaining[token]
                else:
                    chance = (remaining[token] / _draft_prob(q, child, token)).clamp(max=1.0)
                if rng.bernoulli(chance.reshape(1))[0]:
                    path.append(child)
                    row = child + 1
                    break
                remaining = _residual(remaining, None if q is None else q[child], token)
            else:
                return Acceptance(tuple(path), rng.categorical(remaining))


def accept_batch(policy, logits: Sequence[torch.Tensor], batch: DraftBatch, params: Sequence[SamplingParams],
                 rngs: Sequence[RandomSource]) -> list[Acceptance | Exception]:
    """Run a policy over every sequence of a step; a sequence whose acceptance raises gets the
    exception in its place, so that it fails alone.

    `logits[b]` is sequence b's `[1 + T_b, V]`. A policy may offer `accept_batch` with the same
    signature to work on the whole batch at once; the built-in ones do for greedy sequences, whose
    argmax rows take one device transfer for the whole batch.
    """
    own = getattr(policy, "accept_batch", None)
    if own is not None:
        return own(logits, batch, params, rngs)
    results: list[Acceptance | Exception] = []
    for row_logits, draft, row_params, rng in zip(logits, batch.drafts, params, rngs):
        try:
            results.append(policy.accept(row_logits, draft, row_params, rng))
        except Exception as error:  # noqa: BLE001 - handed back per sequence
            results.append(error)
    return results

