"""Built-in verifiers, registered through the same hook as any plugin.

- `hf`: scores a whole draft tree in one forward of a Hugging Face causal LM (tree attention).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from specdec.hookspecs import hookimpl


class HFVerifierParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # On a CUDA device, replay verification forwards from CUDA graphs (bucketed shapes); false
    # runs them eagerly (to debug, or to compare). No effect on CPU.
    cuda_graphs: bool = True


def _build_hf(context, params: HFVerifierParams):
    from specdec.verifiers.hf import HFVerifier

    return HFVerifier(context.target, cuda_graphs=params.cuda_graphs)


@hookimpl
def register_verifiers(register):
    register("hf", HFVerifierParams, _build_hf,
             description="tree-attention verification on a Hugging Face causal LM (SDPA/eager)")
