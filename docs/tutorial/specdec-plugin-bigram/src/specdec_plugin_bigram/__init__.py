"""specdec-plugin-bigram: registers the `bigram` drafter with specdec."""

from pydantic import BaseModel, ConfigDict, Field

from specdec import hookimpl


class BigramParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_tokens: int = Field(4, ge=1, le=32, description="longest draft")
    min_count: int = Field(2, ge=1, description="follow a successor seen at least this often")


def build_bigram(context, params: BigramParams):
    from specdec_plugin_bigram.drafter import BigramDrafter

    return BigramDrafter(params.num_tokens, params.min_count)


@hookimpl
def register_drafters(register):
    register("bigram", BigramParams, build_bigram,
             description="follows the most frequent successor of each token seen so far")
