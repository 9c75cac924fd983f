"""The `none` drafter: never proposes anything, so the engine decodes one token per step.

This is plain autoregressive decoding through the very same loop, the reference that every
losslessness test and benchmark compares speculative pipelines against.
"""

from __future__ import annotations

from specdec.draft import Draft
from specdec.protocols import BaseDrafter, DraftContext

_EMPTY = Draft.empty()


class NoDrafter(BaseDrafter):
    def propose(self, context: DraftContext) -> Draft:
        return _EMPTY
