"""specdec-plugin-medusa: Medusa heads draft a token tree from the target's own hidden state.

Registers the `medusa` drafter and the `specdec medusa` commands (train, distill, tree). This
module stays light (pydantic only): the factory and the command handlers import torch.

    drafter:
      type: medusa
      params: {heads: default}          # shipped heads for SmolLM2-135M-Instruct
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from specdec import MinGain, NodeCost, hookimpl, min_gain_field, node_cost_field

from specdec_plugin_medusa.trees import check_paths

__version__ = "0.1.0"

#: Node budget of derived trees when none is given: small, because on a CPU every verified node
#: costs a share of a step; the fastest budget measured (README, section "Measured speed").
DEFAULT_TREE_NODES = 6


class MedusaParams(BaseModel):
    """The `drafter.params` block of `type: medusa`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heads: str = Field("default", description="shipped heads name, or a folder with config.json and "
                                              "heads.safetensors (from `specdec medusa train`)")
    tree: Literal["auto", "chain"] | list[list[int]] = Field(
        "auto", description="'auto': the heads' recommended tree, or one derived from their measured "
                            "accuracy with num_nodes nodes; 'chain': every head's top-1; or explicit "
                            "paths of ranks, e.g. [[0], [1], [0, 0]]")
    num_nodes: int | None = Field(None, ge=1, le=512, description="with tree 'auto': derive a tree of "
                                                                  "this many nodes from the heads' accuracy")
    max_depth: int | None = Field(None, ge=1, description="cut the tree to this depth (at most the number of heads)")
    adaptive: bool = Field(False, description="treat the tree as a candidate pool and draft, each step, only the "
                                              "nodes whose estimated acceptance pays for their verification "
                                              "(nothing when none does)")
    node_cost: NodeCost = node_cost_field(0.12, condition="with adaptive: ")
    min_gain: MinGain = min_gain_field(condition="with adaptive: ")

    @field_validator("tree")
    @classmethod
    def _valid_tree(cls, value):
        if isinstance(value, list):
            check_paths(value)
        return value

    @model_validator(mode="after")
    def _nodes_need_auto(self):
        if self.num_nodes is not None and self.tree != "auto":
            raise ValueError("num_nodes applies only to tree 'auto' (an explicit tree or a chain has its own size)")
        return self


def choose_tree(params: MedusaParams, num_heads: int, recommended: list[list[int]] | None,
                per_rank: list[list[float]] | None) -> list[list[int]]:
    """The paths a `MedusaParams` block asks for, given what the heads' config records."""
    from specdec_plugin_medusa.trees import chain, derive_tree

    depth = min(num_heads, params.max_depth or num_heads)
    if isinstance(params.tree, list):
        paths = check_paths(params.tree, num_heads=num_heads)
    elif params.tree == "chain":
        paths = chain(depth)
    elif params.num_nodes is not None or not recommended:
        if not per_rank:
            if params.num_nodes is not None:
                raise ValueError(f"heads '{params.heads}' record no accuracy to derive a tree from; give "
                                 f"explicit paths or tree: chain")
            paths = chain(depth)
        else:
            paths = derive_tree(per_rank, params.num_nodes or DEFAULT_TREE_NODES, depth)
    else:
        paths = check_paths(recommended, num_heads=num_heads)
    return [path for path in paths if len(path) <= depth]


def _build_medusa(context, params: MedusaParams):
    from specdec_plugin_medusa.drafter import ConfidencePruning, MedusaDrafter
    from specdec_plugin_medusa.heads import load_heads, shipped_heads
    from specdec_plugin_medusa.trees import TreeLayout

    # a shipped name as is; a folder relative to the pipeline file's directory
    heads_path = params.heads if params.heads in shipped_heads() else str(context.resolve_path(params.heads))
    heads = load_heads(heads_path, context.target)
    accuracy = heads.config.accuracy or {}
    try:
        paths = choose_tree(params, heads.num_heads, heads.config.tree, accuracy.get("per_rank"))
    except ValueError as error:
        from specdec import ConfigError, InputError
        from specdec_plugin_medusa.heads import CONFIG_FILE, resolve_heads

        # blame what set the tree: the params block, or the heads' own config.json
        if isinstance(params.tree, list):
            raise ConfigError(f"drafter.params.tree: {error}") from None
        if params.num_nodes is not None and not accuracy.get("per_rank"):
            raise ConfigError(f"drafter.params.num_nodes: {error}") from None
        raise InputError(f"{resolve_heads(heads_path) / CONFIG_FILE}: {error}") from None
    pruning = None
    if params.adaptive:
        from specdec import cost_model_for

        pruning = ConfidencePruning(cost_model_for(context.target, params.node_cost), params.min_gain)
    return MedusaDrafter(heads, TreeLayout.from_paths(paths), pruning)



@hookimpl
def register_drafters(register):
    register("medusa", MedusaParams, _build_medusa,
             description="Medusa heads on the target's hidden state draft a token tree (top-k per head)")


@hookimpl
def register_commands(subparsers):
    from specdec_plugin_medusa.cli import add_commands

    add_commands(subparsers)
