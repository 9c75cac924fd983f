"""Built-in acceptance policies, registered through the same hook as any plugin."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from specdec.hookspecs import hookimpl


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _build_greedy(context, params: NoParams):
    from specdec.acceptance import GreedyAcceptance

    return GreedyAcceptance()


def _build_rejection(context, params: NoParams):
    from specdec.acceptance import RejectionSampling

    return RejectionSampling()


@hookimpl
def register_acceptance_policies(register):
    register("greedy", NoParams, _build_greedy, lossless=True,
             description="exact argmax matching; needs temperature 0")
    register("rejection", NoParams, _build_rejection, lossless=True,
             description="speculative sampling (Leviathan/Chen), multi-candidate on trees; "
                         "greedy at temperature 0")
