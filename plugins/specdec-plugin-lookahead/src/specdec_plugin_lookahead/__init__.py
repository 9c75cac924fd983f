"""specdec-plugin-lookahead: lookahead decoding (Fu et al. 2024) and plain Jacobi decoding.

Registers the `lookahead` drafter. In `mode: lookahead` a Jacobi window of W columns and N-1
levels rides in every verification forward as aux rows (`specdec.AuxTokens`: their logits come
back to the drafter, their KV is never kept); each step the window's trajectories add N-grams
to a pool keyed by their first token, and up to G of the pool's (N-1)-token continuations of
the last committed token are verified as a token tree. In `mode: jacobi` the guess is the
window itself: a chain of W tokens verified every step and refined from the verification's own
logits (plain Jacobi decoding). Candidates are deterministic point masses, so `rejection` is
lossless at any temperature.

    drafter:
      type: lookahead
      params: {window: auto, ngram: auto, guesses: auto, node_cost: auto}

This module stays light (pydantic only); the factory imports torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from specdec import MinGain, NodeCost, hookimpl, min_gain_field, node_cost_field

__version__ = "0.1.0"

_Window = Annotated[int, Field(ge=1, le=64)] | Literal["auto"]
_NGram = Annotated[int, Field(ge=3, le=8)] | Literal["auto"]
_Guesses = Annotated[int, Field(ge=0, le=64)] | Literal["auto"]

#: Params that only `mode: lookahead` reads.
LOOKAHEAD_ONLY = ("ngram", "guesses", "pool_cap", "pool_from_prompt", "window_gain")


class LookaheadParams(BaseModel):
    """The `drafter.params` block of `type: lookahead`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["lookahead", "jacobi"] = Field(
        "lookahead", description="'lookahead': a Jacobi window in aux rows fills an n-gram pool whose candidates "
                                 "are verified as a tree; 'jacobi': plain Jacobi decoding, the window itself is "
                                 "the draft (a chain)")
    window: _Window = Field(
        "auto", description="W: the window's columns (lookahead) or the chain length (jacobi); 'auto' picks it "
                            "from the verification cost curve (see the plugin README)")
    ngram: _NGram = Field(
        "auto", description="N (lookahead): n-gram size; the window has N-1 levels and candidates N-1 tokens; "
                            "'auto' picks it with the window")
    guesses: _Guesses = Field(
        "auto", description="G (lookahead): most candidate n-grams verified per step (0 = the window only fills "
                            "the pool); 'auto' verifies the candidate nodes that pay for their verification, out "
                            "of at most max(W, 4) n-grams")
    pool_cap: int | None = Field(
        None, ge=1, le=1024, description="n-grams kept per first token, least recently added dropped first "
                                         "(default: G, as in the reference implementation)")
    pool_from_prompt: bool = Field(
        True, description="also put the prompt's n-grams, and those of the text generated so far, into the pool "
                          "(the reference's POOL_FROM_PROMPT)")
    window_gain: float = Field(
        0.1, ge=0.0, le=10.0, description="with window: auto, the extra tokens per step a window is assumed to "
                                          "bring before any is measured: the largest window whose verification "
                                          "overhead is at most this is taken")
    node_cost: NodeCost = node_cost_field(0.08)
    min_gain: MinGain = min_gain_field()

    @model_validator(mode="after")
    def _mode_params(self):
        if self.mode == "jacobi":
            stray = [name for name in LOOKAHEAD_ONLY if name in self.model_fields_set]
            if stray:
                verb = "applies" if len(stray) == 1 else "apply"
                raise ValueError(f"{', '.join(stray)} {verb} only to mode: lookahead (mode: jacobi drafts its "
                                 f"window as a chain, with no n-gram pool)")
        return self


def _build_lookahead(context, params: LookaheadParams):
    from specdec import cost_model_for
    from specdec_plugin_lookahead.drafter import JacobiDrafter, LookaheadDrafter

    cost = cost_model_for(context.target, params.node_cost)
    config = getattr(context.target, "config", None)
    max_positions = getattr(config, "max_position_embeddings", None)
    if params.mode == "jacobi":
        return JacobiDrafter(params.window, cost=cost, min_gain=params.min_gain)
    return LookaheadDrafter(params.window, params.ngram, params.guesses, pool_cap=params.pool_cap,
                            pool_from_prompt=params.pool_from_prompt, window_gain=params.window_gain,
                            cost=cost, min_gain=params.min_gain, max_positions=max_positions)


@hookimpl
def register_drafters(register):
    register("lookahead", LookaheadParams, _build_lookahead,
             description="lookahead decoding: a Jacobi window in the verification forward fills an n-gram pool "
                         "verified as a tree (mode: jacobi for plain Jacobi decoding)")
