"""The cost-model parameters drafters share, as pydantic field types (no torch here).

Plugin parameter models must stay importable without torch (`specdec plugins` and `specdec
validate` load no model), so the fields that feed `specdec.cost` live here rather than there.
A drafter's params model declares them as

    node_cost: NodeCost = node_cost_field(0.08)
    min_gain: MinGain = min_gain_field()

and its factory turns them into a cost model with `specdec.cost_model_for`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

#: Verification cost of one draft node in plain steps, or "auto" to measure the target's curve.
NodeCost = Annotated[float, Field(ge=0.0, le=10.0)] | Literal["auto"]
#: Least expected speed gain over a plain step worth drafting for.
MinGain = Annotated[float, Field(ge=0.0, le=10.0)]


def node_cost_field(default: float, *, condition: str = "") -> Any:
    """A `node_cost` field with `default` (a number: the linear model's slope); `condition`
    prefixes the description (e.g. "with adaptive: ")."""
    return Field(default, description=(
        f"{condition}verification cost of one draft node as a fraction of a plain decoding step: high "
        "in float32 on a small CPU, low in bfloat16 with AMX or on a GPU (measured curves, with the "
        "commands that measured them: docs/benchmarks.md), or 'auto' to measure the target's whole cost "
        "curve when the pipeline is built (a few seconds on a CPU)"))


def min_gain_field(*, condition: str = "") -> Any:
    """A `min_gain` field, 0 by default: draft whenever the cost model expects any gain."""
    return Field(0.0, description=f"{condition}least expected speed gain over a plain step worth drafting for")
