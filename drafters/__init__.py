"""Built-in drafters, registered through the same hook as any plugin.

- `none`: proposes nothing; the engine then decodes one token per step (the AR reference).
- `draft_model`: a smaller causal LM with the target's tokenizer drafts a chain of k tokens.

This module stays light (no torch): the factories import the implementations.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from specdec.hookspecs import hookimpl


class NoDrafterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DraftModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="draft model: Hugging Face id or local path (same tokenizer as the target)")
    num_tokens: int = Field(4, ge=1, le=64, description="draft tokens per step (k)")
    greedy_draft: bool = Field(False, description="draft with argmax even when sampling")


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


@hookimpl
def register_drafters(register):
    register("none", NoDrafterParams, _build_none,
             description="no drafting: plain autoregressive decoding through the same engine")
    register("draft_model", DraftModelParams, _build_draft_model,
             description="a smaller causal LM with the target's tokenizer drafts k tokens per step")
