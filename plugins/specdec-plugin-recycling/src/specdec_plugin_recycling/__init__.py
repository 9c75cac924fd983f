"""specdec-plugin-recycling: Token Recycling (Luo et al. 2024) drafts from the target's own
discarded candidates.

Registers the `token_recycling` drafter. Every verification forward's logits (all rows, the
rejected nodes' included) update an adjacency table from each token id to the target's top-k
next tokens; each step walks a static draft-tree template (the paper's 80-node tree by default)
through the table from the last committed token, and drafts the nodes that pay for their
verification on this machine. No draft model, no datastore, no training.

    drafter:
      type: token_recycling
      params: {node_cost: auto}

This module stays light (pydantic only); the factory imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from specdec import MinGain, NodeCost, hookimpl, min_gain_field, node_cost_field

from specdec_plugin_recycling.templates import TEMPLATES, check_paths

__version__ = "0.1.0"


class TokenRecyclingParams(BaseModel):
    """The `drafter.params` block of `type: token_recycling`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int = Field(8, ge=1, le=64, description="candidates kept per token in the adjacency table (the paper: 8)")
    tree: Literal["paper"] | list[list[int]] = Field(
        "paper", description="the draft-tree template: 'paper' (the reference implementation's 80-node tree), or "
                             "paths of ranks, e.g. [[0], [1], [0, 0]] ([0, 1] = the second candidate of the "
                             "first candidate's row)")
    table: Literal["pipeline", "request"] = Field(
        "pipeline", description="'pipeline': one table for every request of the pipeline, kept for its lifetime "
                                "(the reference implementation's behaviour); 'request': every generation starts "
                                "from an empty table")
    adaptive: bool = Field(True, description="draft only the template nodes whose estimated acceptance pays for their "
                                             "verification (nothing when none does); false = the whole template, up "
                                             "to max_nodes, likeliest first")
    max_nodes: int = Field(80, ge=1, le=512, description="largest draft tree")
    node_cost: NodeCost = node_cost_field(0.08)
    min_gain: MinGain = min_gain_field()

    @model_validator(mode="after")
    def _tree_fits_the_table(self):
        check_paths(TEMPLATES[self.tree] if isinstance(self.tree, str) else self.tree, top_k=self.top_k)
        return self


def _state(context, params: TokenRecyclingParams):
    """The table and acceptance model the drafter instances of one pipeline share (built once per
    pipeline and params block; each instance of `table: request` clears the table it is given)."""
    from specdec_plugin_recycling.drafter import RecyclingState

    if params.table == "request":
        return RecyclingState.new(params.top_k)
    key = ("specdec_plugin_recycling", params.model_dump_json())
    if key not in context.extras:
        context.extras[key] = RecyclingState.new(params.top_k)
    return context.extras[key]


def _build_token_recycling(context, params: TokenRecyclingParams):
    from specdec import cost_model_for
    from specdec_plugin_recycling.drafter import TokenRecyclingDrafter

    tree = TEMPLATES[params.tree] if isinstance(params.tree, str) else params.tree
    return TokenRecyclingDrafter(tree, state=_state(context, params), per_request=params.table == "request",
                                 adaptive=params.adaptive, cost=cost_model_for(context.target, params.node_cost),
                                 max_nodes=params.max_nodes, min_gain=params.min_gain)


@hookimpl
def register_drafters(register):
    register("token_recycling", TokenRecyclingParams, _build_token_recycling,
             description="Token Recycling: a tree walked through a table of the target's top-k next tokens, "
                         "learned from every verification")
