"""The `medusa` drafter: a static token tree filled from the heads' top-k lists.

Each step the heads read one vector, the target's final hidden state at the last committed
position, which the verifier computed in the previous verification pass (`observe` receives
it; there is no extra forward). Head k predicts the token k + 2 positions ahead of that
position, i.e. depth k + 1 below the draft's root (the engine's `next_token`, already chosen
by the acceptance policy from the same pass). Drafts are deterministic (top-k, no q), so the
`greedy` and `rejection` policies stay lossless.
"""

from __future__ import annotations

from typing import Sequence

import torch

from specdec.draft import Draft
from specdec.protocols import BaseDrafter, DraftContext, StepOutcome
from specdec.sampling import SamplingParams

from specdec_plugin_medusa.heads import MedusaHeads
from specdec_plugin_medusa.trees import TreeLayout

FINAL_HIDDEN_STATE = -1  # Hugging Face hidden_states index of the final normed state


class MedusaDrafter(BaseDrafter):
    """Proposes the tree `layout` from `heads` (which must fit the target; see `load_heads`).

    The first step of a generation has no hidden state yet, so it proposes an empty draft (the
    prefill step).
    """

    provides_draft_probs = False
    hidden_state_layers = (FINAL_HIDDEN_STATE,)

    def __init__(self, heads: MedusaHeads, layout: TreeLayout):
        if layout.depth > heads.num_heads:
            raise ValueError(f"the tree is {layout.depth} deep but there are only {heads.num_heads} heads")
        self.heads = heads
        self.layout = layout
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
        candidates = logits.topk(layout.top_k, dim=-1).indices  # [depth, top_k]
        return Draft(candidates[heads, ranks], layout.parents)

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
