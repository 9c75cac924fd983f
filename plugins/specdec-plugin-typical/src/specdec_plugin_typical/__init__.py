"""specdec-plugin-typical: Medusa's typical acceptance policy. LOSSY under sampling.

Accepts draft tokens the target finds plausible, P(x) > min(epsilon, delta * exp(-entropy)),
instead of rejection sampling: more tokens per step, but under sampling the output is NOT
distributed as plain sampling from the target (at temperature 0 it is exactly greedy). It is
registered with `lossless=False`, so `specdec plugins` flags it and pipelines log a warning.
See `specdec_plugin_typical.policy` for the exact rule and `specdec typical measure` for how
lossy it is.

    acceptance:
      type: typical
      params: {epsilon: 0.09, delta: 0.3}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from specdec import hookimpl

__version__ = "0.1.0"

# Reference values (Medusa's medusa_generate); mirrored in specdec_plugin_typical.policy, which
# this light module does not import (it needs torch).
EPSILON = 0.09
DELTA = 0.3


class TypicalParams(BaseModel):
    """The `acceptance.params` block of `type: typical`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(EPSILON, gt=0.0, le=1.0,
                           description="hard probability threshold (Medusa's posterior_threshold)")
    delta: float = Field(DELTA, gt=0.0, description="entropy-scaled threshold factor: a token passes when "
                                                    "P > min(epsilon, delta * exp(-H)) (Medusa's posterior_alpha)")


def _build_typical(context, params: TypicalParams):
    from specdec_plugin_typical.policy import TypicalAcceptance

    return TypicalAcceptance(params.epsilon, params.delta)


@hookimpl
def register_acceptance_policies(register):
    register("typical", TypicalParams, _build_typical, lossless=False,
             description="Medusa typical acceptance: accept tokens with P > min(eps, delta*exp(-H)); "
                         "more tokens per step, LOSSY under sampling, exact greedy at temperature 0")


@hookimpl
def register_commands(subparsers):
    from specdec_plugin_typical.cli import add_commands

    add_commands(subparsers)
