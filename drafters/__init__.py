"""Built-in drafters, registered through the same hook as any plugin.

- `none`: proposes nothing; the engine then decodes one token per step (the AR reference).
- `draft_model`: a smaller causal LM with the target's tokenizer drafts a chain of k tokens.
- `fallback`: asks several drafters in order and verifies the first non-empty draft.
- `merge`: asks every drafter and verifies one tree merged from theirs, pruned to what pays.

This module stays light (no torch): the factories import the implementations.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specdec.config import ComponentSpec
from specdec.cost_params import MinGain, NodeCost, min_gain_field, node_cost_field
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


class MergeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    drafters: list[ComponentSpec] = Field(
        min_length=1, description="drafters whose trees are merged; each must draft deterministically (no q)")
    max_nodes: Literal["auto"] | int = Field(
        "auto", description="largest merged tree; 'auto': as many nodes as pay on the cost model "
                                          "(within the step's budget)")
    node_cost: NodeCost = node_cost_field(0.08)
    min_gain: MinGain = min_gain_field()
    adaptive: bool = Field(True, description="verify only the merged nodes that pay for their verification "
                                             "(nothing when none does); false = the likeliest nodes up to max_nodes")
    combine: Literal["max", "noisy_or"] = Field(
        "max", description="estimate of a node several drafters proposed: the largest of theirs ('max'), or "
                           "1 - prod(1 - p) ('noisy_or', as if they were independent)")

    @field_validator("max_nodes")
    @classmethod
    def _max_nodes_range(cls, value):
        if value != "auto" and not 1 <= value <= 512:
            raise ValueError("must be 'auto' or a number of nodes from 1 to 512")
        return value

    def nested_drafters(self):
        """Sub-drafter blocks for `specdec validate` (relative location, block)."""
        return [(("drafters", index), block) for index, block in enumerate(self.drafters)]

    def nested_drafter_problem(self, relative, params: BaseModel):
        """Members that sample their drafts (a `greedy_draft: false` option) cannot be merged:
        a merged node's q would be a mixture no drafter drew from."""
        if getattr(params, "greedy_draft", True) is False:
            return ("greedy_draft", "merge verifies deterministic drafts only, and this drafter samples its "
                                    "drafts when the temperature is above 0: set greedy_draft: true")
        return None


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


def _build_merge(context, params: MergeParams):
    from specdec.cost import cost_model_for
    from specdec.drafters.merge import MergeDrafter

    members = [context.build_drafter(block.model_dump(), f"drafter.params.drafters.{index}")
               for index, block in enumerate(params.drafters)]
    return MergeDrafter(members, [block.type for block in params.drafters],
                        cost=cost_model_for(context.target, params.node_cost),
                        max_nodes=None if params.max_nodes == "auto" else params.max_nodes,
                        min_gain=params.min_gain, adaptive=params.adaptive, combine=params.combine)


@hookimpl
def register_drafters(register):
    register("none", NoDrafterParams, _build_none,
             description="no drafting: plain autoregressive decoding through the same engine")
    register("draft_model", DraftModelParams, _build_draft_model,
             description="a smaller causal LM with the target's tokenizer drafts k tokens per step")
    register("fallback", FallbackParams, _build_fallback,
             description="ask several drafters in order; verify the first non-empty draft")
    register("merge", MergeParams, _build_merge,
             description="ask several deterministic drafters; verify one tree merged from theirs, pruned to "
                         "the nodes that pay")
