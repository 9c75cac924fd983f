"""Sampling parameters, the one logits -> probabilities transform, and the random source.

Losslessness rests on one rule: the target distribution p used to accept or reject a draft, and
the draft distribution q a drafter sampled from, are warped by exactly the same function as
plain sampling. `warp_logits` is that function; nothing else in specdec turns logits into
sampling probabilities.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from specdec.params import SamplingParams

__all__ = ["RandomSource", "SamplingParams", "TorchRandom", "warp_logits"]


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turn logits into the sampling distribution of `params` (temperature, then top-k, then top-p).

    This is the order Hugging Face `generate()` applies them in. Ties at the top-k boundary are all
    kept, as in transformers. Requires `params.temperature > 0`: greedy decoding has no
    distribution to warp.

    :param logits: `[..., V]` raw logits of any float dtype.
    :returns: `[..., V]` float32 probabilities that sum to 1 along the last dimension.
    """
    if params.temperature <= 0:
        raise ValueError("warp_logits needs temperature > 0; greedy decoding uses argmax instead")
    scores = logits.float() / params.temperature
    vocab = scores.shape[-1]
    if params.top_k is not None and params.top_k < vocab:
        kth_best = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        probs = probs.masked_fill(~_nucleus(probs, params.top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`[..., V]` bool: the smallest set of most likely tokens whose mass reaches `top_p`.

    A token is kept while the more likely tokens have not yet reached `top_p`; the most likely
    is always kept. Sorting a whole vocabulary costs milliseconds per row on a CPU, so there the
    candidates come from `topk` with a growing k until they hold `top_p` of the mass (tokens
    outside them cannot be in the nucleus). On accelerators a full sort is cheap and needs no
    host synchronization.
    """
    vocab = probs.shape[-1]
    count = vocab if probs.device.type != "cpu" else min(vocab, 64)
    while True:
        values, order = probs.topk(count, dim=-1)  # sorted, most likely first
        if count == vocab or bool((values.sum(dim=-1) >= top_p).all()):
            break
        count = min(vocab, count * 8)
    keep_sorted = (values.cumsum(dim=-1) - values) < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, keep_sorted)


@runtime_checkable
class RandomSource(Protocol):
    """Every random decision of drafting and acceptance goes through one of these two calls.

    Keeping randomness behind this narrow interface lets the test harness replace it with an
    enumerator that explores every outcome with its exact probability (`specdec.testing`).
    """

    def bernoulli(self, probs: torch.Tensor) -> list[bool]:
        """Independent coin flips, True with the given probabilities. `probs`: `[n]`."""
        ...

    def categorical(self, probs: torch.Tensor) -> int:
        """One index drawn with probability proportional to `probs` (`[V]`, non-negative)."""
        ...


class TorchRandom:
    """The default `RandomSource`: a seeded `torch.Generator` on the device of the probabilities."""

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def bernoulli(self, probs: torch.Tensor) -> list[bool]:
        draws = torch.rand(probs.shape, generator=self.generator, device=self.device)
        return (draws < probs.to(self.device)).tolist()

    def categorical(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs.to(self.device).float(), 1, generator=self.generator))
