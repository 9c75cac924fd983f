"""The `medusa` drafter: a static token tree filled from the heads' top-k lists.

Each step the heads read one vector, the target's final hidden state at the last committed
position, which the verifier computed in the previous verification pass (`observe` receives
it; there is no extra forward). Head k predicts the token k + 2 positions ahead of that
position, i.e. depth k + 1 below the draft's root (the engine's `next_token`, already chosen
by the acceptance policy from the same pass). Drafts are deterministic (top-k, no q), so the
`greedy` and `rejection` policies stay lossless.

With `ConfidencePruning` the tree is a candidate pool instead: each step keeps only the nodes
whose estimated acceptance pays for their share of the verification (in the spirit of EAGLE-2's
dynamic trees), and drafts nothing when no node does. Which nodes are drafted never changes what
is accepted, so pruning is as lossless as the full tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from specdec import BaseDrafter, CostModel, Draft, DraftContext, SamplingParams, StepOutcome, select_nodes

from specdec_plugin_medusa.heads import MedusaHeads
from specdec_plugin_medusa.trees import TreeLayout

FINAL_HIDDEN_STATE = -1  # Hugging Face hidden_states index of the final normed state


@dataclass(frozen=True)
class ConfidencePruning:
    """Draft only the tree nodes that pay for their verification.

    A node's acceptance probability is estimated as the product of the heads' softmax
    probabilities along its path (each head's probability that its token is the right one,
    depths treated as independent, as in `trees.derive_tree`); `specdec.select_nodes` keeps the
    most probable nodes up to the count that maximises the expected tokens per unit of
    verification cost, or none when no count beats `1 + min_gain`.

    :param cost: the target's verification cost (a linear `node_cost`, or a curve measured on the
        target); it depends on the hardware (measured: docs/benchmarks.md, section "Medusa with
        confidence pruning").
    :param min_gain: least expected speed gain over a plain step worth drafting for.
    """

    cost: CostModel = CostModel(node_cost=0.12)
    min_gain: float = 0.0

    def select(self, node_probs: Sequence[float], parents: Sequence[int]) -> list[int]:
        """The nodes to draft, in tree order (parents before children)."""
        path_probs: list[float] = []
        for prob, parent in zip(node_probs, parents):
            path_probs.append(prob * (path_probs[parent] if parent >= 0 else 1.0))
        return sorted(select_nodes(path_probs, parents, self.cost, min_gain=self.min_gain))


class MedusaDrafter(BaseDrafter):
    """Proposes the tree `layout` from `heads` (which must fit the target; see `load_heads`).

    The first step of a generation has no hidden state yet, so it proposes an empty draft (the
    prefill step).
    """

    hidden_state_layers = (FINAL_HIDDEN_STATE,)

    def __init__(self, heads: MedusaHeads, layout: TreeLayout, pruning: ConfidencePruning | None = None):
        if layout.depth > heads.num_heads:
            raise ValueError(f"the tree is {layout.depth} deep but there are only {heads.num_heads} heads")
        self.heads = heads
        self.layout = layout
        self.pruning = pruning
        self._layouts: dict[int, tuple[TreeLayout, torch.Tensor, torch.Tensor]] = {}
        self._hidden: torch.Tensor | None = None  # [H] at the last committed position

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self._hidden = None

    @torch.inference_mode()
    def propose(self, context: DraftContext) -> Draft:
        if self._hidden is None:
            return Draft.empty()
        layout, heads, ranks = self._layout(min(self.layout.depth, context.max_depth))
        logits = self.heads(self._hidden, layout.depth)  # [depth, V]
        top = logits.topk(layout.top_k, dim=-1)  # [depth, top_k]
        tokens = top.indices[heads, ranks]
        if self.pruning is None:
            return Draft(tokens, layout.parents)
        log_probs = top.values[heads, ranks].float() - logits.float().logsumexp(dim=-1)[heads]
        kept = self.pruning.select(log_probs.exp().tolist(), layout.parents)
        return Draft(tokens, layout.parents).subtree(kept)

    def observe(self, outcome: StepOutcome) -> None:
        self._hidden = outcome.hidden_states[FINAL_HIDDEN_STATE][-1]

    def _layout(self, depth: int) -> tuple[TreeLayout, torch.Tensor, torch.Tensor]:
        """The tree cut to `depth` with its index tensors, built once per depth."""
        if depth not in self._layouts:
            layout = self.layout if depth >= self.layout.depth else self.layout.truncated(depth)
            device = next(self.heads.parameters()).device
            self._layouts[depth] = (layout, torch.tensor(layout.heads, device=device),
                                    torch.tensor(layout.ranks, device=device))
        return self._layouts[depth]
