"""specdec-plugin-eagle: EAGLE draft models draft token trees from the target's own features.

Registers the `eagle` drafter and the `specdec eagle` commands (train, export, accuracy). This
module stays light (pydantic only): the factory and the command handlers import torch.

    drafter:
      type: eagle
      params: {weights: default}        # shipped draft model for SmolLM2-135M-Instruct
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from specdec import MinGain, NodeCost, hookimpl, min_gain_field, node_cost_field

__version__ = "0.1.0"


class EagleParams(BaseModel):
    """The `drafter.params` block of `type: eagle`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: str = Field("default", description="shipped draft model name, or a folder: specdec's own (from "
                                                "`specdec eagle train`), an EAGLE-1/2 checkpoint of the EAGLE "
                                                "authors, or an EAGLE-3 one (SpecForge or vLLM speculators layout)")
    tree: Literal["dynamic", "chain"] = Field("dynamic", description="'dynamic': EAGLE-2 trees grown by path "
                                                                     "confidence; 'chain': the top-1 token per level")
    depth: int = Field(6, ge=1, le=32, description="deepest level drafted")
    top_k: int = Field(4, ge=1, le=64, description="children drafted below each expanded node (dynamic trees)")
    frontier: int | None = Field(None, ge=1, le=64, description="nodes of a level expanded to the next (dynamic "
                                                                "trees; default: top_k)")
    max_nodes: int = Field(24, ge=1, le=512, description="most nodes a step verifies")
    draft_vocab: int | None = Field(None, ge=1, description="draft over the first N rows of the draft vocabulary only "
                                                          "(the N most frequent tokens of models trained by specdec "
                                                          "with --draft-vocab); default: all of it")
    sample: bool = Field(True, description="when sampling, draw drafts from the draft distribution (with their q); "
                                           "false: draft the likeliest tokens at every temperature")
    node_cost: NodeCost = node_cost_field("auto")
    min_gain: MinGain = min_gain_field()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the draft model's precision ('auto': the target's)")

    @model_validator(mode="after")
    def _chain_has_no_width(self):
        if self.tree == "chain" and (self.top_k != 4 or self.frontier is not None):
            raise ValueError("top_k and frontier shape dynamic trees; a chain drafts one token per level")
        return self


def _build_eagle(context, params: EagleParams):
    import torch

    from specdec import cost_model_for, follow_linear_kernel
    from specdec_plugin_eagle.build import attach
    from specdec_plugin_eagle.checkpoints import load_draft, shipped_weights
    from specdec_plugin_eagle.drafter import EagleDrafter, TreeShape

    # a shipped name as is; a folder relative to the pipeline file's directory
    weights = params.weights if params.weights in shipped_weights() else str(context.resolve_path(params.weights))
    model = load_draft(weights, context.target, context.tokenizer)
    if params.draft_vocab is not None:
        from specdec import ConfigError

        try:
            model.truncate_vocabulary(params.draft_vocab)
        except ValueError as error:
            raise ConfigError(f"drafter.params.draft_vocab: {error}") from None
    dtype = None if params.dtype == "auto" else getattr(torch, params.dtype)
    model = attach(model, context.target, dtype)
    follow_linear_kernel(model, context.target)  # its products on the target's CPU kernel (oneDNN where faster)
    if params.tree == "chain":
        shape = TreeShape(depth=params.depth, top_k=1, frontier=1, max_nodes=min(params.max_nodes, params.depth))
    else:
        shape = TreeShape(depth=params.depth, top_k=params.top_k, frontier=params.frontier or params.top_k,
                          max_nodes=params.max_nodes)
    return EagleDrafter(model, shape, cost_model_for(context.target, params.node_cost), params.min_gain,
                        sample=params.sample)


@hookimpl
def register_drafters(register):
    register("eagle", EagleParams, _build_eagle,
             description="EAGLE: a one-layer draft model on the target's own features drafts dynamic token trees")


@hookimpl
def register_commands(subparsers):
    from specdec_plugin_eagle.cli import add_commands

    add_commands(subparsers)
