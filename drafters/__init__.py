"""Built-in drafters, registered through the same hook as any plugin.

- `none`: proposes nothing; the engine then decodes one token per step (the AR reference).
- `draft_model`: a smaller causal LM with the target's tokenizer drafts a chain of k tokens.
- `fallback`: asks several drafters in order and verifies the first non-empty draft.

This module stays light (no torch): the factories import the implementations.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from specdec.config import ComponentSpec
from specdec.hookspecs import hookimpl


class NoDrafterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DraftModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="draft model: Hugging Face id or local path (same tokenizer as the target)")
    num_tokens: int = Field(4, ge=1, le=64, description="draft tokens per step (k)")
    greedy_draft: bool = Field(False, description="draft with argmax even when sampling")


class FallbackParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    drafters: list[ComponentSpec] = Field(min_length=1, description="drafters to ask, in order")

    def nested_drafters(self):
        """Sub-drafter blocks for `specdec validate` (relative location, block)."""
        return [(("drafters", index), block) for index, block in enumerate(self.drafters)]


def _build_none(context, params: NoDrafterParams):
    from specdec.drafters.none import NoDrafter

    return NoDrafter()


def _build_draft_model(context, params: DraftModelParams):
    from specdec.drafters.draft_model import DraftModelDrafter, check_same_vocabulary

    model, tokenizer = context.load_model(params.model)
    if context.tokenizer is not None and tokenizer is not None:
        check_same_vocabulary(context.tokenizer, tokenizer, params.model)
    return DraftModelDrafter(model, params.num_tokens, params.greedy_draft,
                             target_vocab_size=context.target.get_output_embeddings().weight.shape[0])


def _build_fallback(context, params: FallbackParams):
    from specdec.drafters.fallback import FallbackDrafter

    return FallbackDrafter([context.build_drafter(block.model_dump(), f"drafter.params.drafters.{index}")
                            for index, block in enumerate(params.drafters)])


@hookimpl
def register_drafters(register):
    register("none", NoDrafterParams, _build_none,
             description="no drafting: plain autoregressive decoding through the same engine")
    register("draft_model", DraftModelParams, _build_draft_model,
             description="a smaller causal LM with the target's tokenizer drafts k tokens per step")
    register("fallback", FallbackParams, _build_fallback,
             description="ask several drafters in order; verify the first non-empty draft")
