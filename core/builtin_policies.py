"""Built-in acceptance policies, registered through the same hook as any plugin."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from specdec.hookspecs import hookimpl


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GreedyParams(NoParams):
    """The greedy policy has no params, but it only runs at temperature 0."""

    def check_sampling(self, sampling) -> str | None:
        """Refuse sampling when the pipeline is validated, not at the first step (see `config.sampling_problem`)."""
        if sampling.greedy:
            return None
        return (f"the 'greedy' acceptance policy decodes deterministically but temperature is "
                f"{sampling.temperature}; set temperature to 0 or use the 'rejection' policy, which "
                f"samples losslessly at any temperature")


def _build_greedy(context, params: GreedyParams):
    from specdec.acceptance import GreedyAcceptance

    return GreedyAcceptance()


def _build_rejection(context, params: NoParams):
    from specdec.acceptance import RejectionSampling

    return RejectionSampling()


@hookimpl
def register_acceptance_policies(register):
    register("greedy", GreedyParams, _build_greedy, lossless=True,
             description="exact argmax matching; needs temperature 0")
    register("rejection", NoParams, _build_rejection, lossless=True,
             description="speculative sampling (Leviathan/Chen), multi-candidate on trees; "
                         "greedy at temperature 0")
