"""Typical acceptance (Medusa, Cai et al. 2024): keep draft tokens the target finds plausible.

LOSSY under sampling: the output is not distributed as plain sampling from the target. At
temperature 0 it is exactly greedy decoding.

The rule, at temperature T > 0. Let P be the target's sampling distribution at a node's parent
(`warp_logits`: temperature, then top-k, then top-p, exactly as plain sampling would use) and
H = -sum P log P its entropy. A drafted token x is *plausible* when

    P(x) > min(epsilon, delta * exp(-H))

(reference defaults epsilon = 0.09, delta = 0.3; Medusa's helper functions have the two swapped,
`medusa_generate` passes them right). A node is accepted when it and all its ancestors are
plausible. Among the accepted nodes the policy keeps the deepest one, ties broken by the
larger likelihood `sum log P(x)` along its path, and accepts its whole path. The token after
the path is a sample from P at the last accepted node (the root when nothing was accepted), so
with an empty draft the policy is plain sampling. Medusa instead takes that token greedily
(`fast=True`), which makes its decoding deterministic at every temperature; sampling it keeps
the output random and matches plain sampling exactly whenever no draft token is kept.

Because P is the warped distribution, a token that top-k or top-p would never sample has P = 0
and is never accepted. The entropy is exact (0 log 0 = 0) where Medusa adds 1e-5 inside the log.
Draft probabilities (q) are ignored: any drafter works, chains and trees, with or without q.
"""

from __future__ import annotations

import torch

from specdec import Acceptance, Draft, RandomSource, SamplingParams, greedy_walk, warp_logits

#: Reference defaults (Medusa's `medusa_generate`: posterior_threshold=0.09, posterior_alpha=0.3).
EPSILON = 0.09
DELTA = 0.3


def plausibility_thresholds(probs: torch.Tensor, epsilon: float, delta: float) -> torch.Tensor:
    """`probs` `[R, V]` -> `[R]` thresholds `min(epsilon, delta * exp(-entropy))` per row."""
    entropy = torch.special.entr(probs).sum(dim=-1)  # entr(p) = -p log p, 0 at p = 0
    return torch.clamp(delta * torch.exp(-entropy), max=epsilon)


class TypicalAcceptance:
    """Accepts the longest plausible path (see the module docstring). Lossy under sampling."""

    lossless = False

    def __init__(self, epsilon: float = EPSILON, delta: float = DELTA):
        if not 0.0 < epsilon <= 1.0:
            raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
        if delta <= 0.0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.epsilon = epsilon
        self.delta = delta

    def accept(self, logits: torch.Tensor, draft: Draft, params: SamplingParams,
               rng: RandomSource) -> Acceptance:
        if params.greedy:
            return greedy_walk(logits, draft)
        probs = warp_logits(logits, params)  # [1 + T, V]
        if draft.num_nodes == 0:
            return Acceptance((), rng.categorical(probs[0]))
        node = self.best_node(probs, draft)
        if node < 0:
            return Acceptance((), rng.categorical(probs[0]))
        return Acceptance(tuple(draft.path_to(node)), rng.categorical(probs[node + 1]))

    def best_node(self, probs: torch.Tensor, draft: Draft) -> int:
        """The deepest node whose whole path is plausible (ties: most likely path), or -1."""
        parent_rows = torch.tensor([parent + 1 for parent in draft.parents], device=probs.device)
        tokens = draft.tokens.to(probs.device)
        chosen = probs[parent_rows, tokens]  # [T]: P(x) at each node's parent
        thresholds = plausibility_thresholds(probs, self.epsilon, self.delta)[parent_rows]
        plausible = (chosen > thresholds).tolist()
        log_likelihood = torch.log(chosen).tolist()
        best, best_key = -1, (0, 0.0)
        accepted: list[bool] = []
        score: list[float] = []
        for node, parent in enumerate(draft.parents):
            ok = plausible[node] and (parent < 0 or accepted[parent])
            accepted.append(ok)
            score.append(log_likelihood[node] + (score[parent] if parent >= 0 else 0.0))
            if ok:
                key = (draft.depths[node], score[node])
                if best < 0 or key > best_key:
                    best, best_key = node, key
        return best
