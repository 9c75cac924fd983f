"""The `fallback` drafter: ask several drafters in order and verify the first non-empty draft.

Typical use: prompt lookup first (free when the answer copies the prompt), then a datastore or a
draft model when the prompt has nothing to offer.
"""

from __future__ import annotations

from typing import Sequence

from specdec.draft import Draft
from specdec.protocols import BaseDrafter, DraftContext, Drafter, StepOutcome
from specdec.sampling import SamplingParams

_EMPTY = Draft.empty()


class FallbackDrafter(BaseDrafter):
    """Every sub-drafter hears every outcome (so its state follows the committed tokens); the
    outcome's `draft` is then the draft of whichever sub-drafter was used."""

    def __init__(self, drafters: Sequence[Drafter]):
        if not drafters:
            raise ValueError("fallback needs at least one drafter")
        self.drafters = list(drafters)
        self.hidden_state_layers = tuple(sorted({layer for drafter in self.drafters
                                                 for layer in drafter.hidden_state_layers}))
        # Token Recycling learns from every verification's logits, whichever draft was verified
        self.wants_logits = any(getattr(drafter, "wants_logits", False) for drafter in self.drafters)
        self.used: list[int] = [0] * len(self.drafters)  # steps each sub-drafter's draft was verified

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        for drafter in self.drafters:
            drafter.start(prompt, params)

    def propose(self, context: DraftContext) -> Draft:
        for index, drafter in enumerate(self.drafters):
            draft = drafter.propose(context)
            if draft.num_nodes:
                self.used[index] += 1
                return draft
        return _EMPTY

    def observe(self, outcome: StepOutcome) -> None:
        for drafter in self.drafters:
            drafter.observe(outcome)
