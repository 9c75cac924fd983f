"""specdec-plugin-retrieval: drafters that copy text instead of running a model.

- `prompt_lookup`: prompt lookup decoding; drafts what followed earlier occurrences of the
  trailing n-gram (or, with `matcher: suffix_automaton`, of the longest repeated suffix) in the
  prompt and the generated text.
- `rest`: retrieval-based drafting (REST); drafts token trees from a suffix-array datastore
  built from a corpus (`specdec retrieval build`, `specdec retrieval self-distill`).

Both draft adaptively: a cost model of verification and acceptance learned online decide how
many nodes to draft, and whether to draft at all (see `adaptive`).

This module only registers the components and their parameter models (no torch here); the
factories import the implementations.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from specdec import MinGain, NodeCost, hookimpl, min_gain_field, node_cost_field

__version__ = "0.1.0"


class _AdaptiveParams(BaseModel):
    """Cost-model settings shared by both drafters (see `specdec_plugin_retrieval.adaptive`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adaptive: bool = Field(True, description="draft only the nodes the cost model says pay for their "
                                             "verification (and nothing when none does); false = always "
                                             "draft the full budget when there is a match")
    node_cost: NodeCost = node_cost_field(0.08)
    draft_overhead: float = Field(0.0, ge=0.0, le=10.0,
                                  description="fixed extra cost of a step that verifies a draft, as a "
                                              "fraction of a plain step")
    min_gain: MinGain = min_gain_field()


class PromptLookupParams(_AdaptiveParams):
    max_ngram: int = Field(4, ge=1, le=32, description="longest trailing n-gram to look up")
    min_ngram: int = Field(1, ge=1, le=32, description="shortest trailing n-gram to look up")
    num_tokens: int = Field(10, ge=1, le=128, description="deepest draft (continuation length)")
    max_branches: int = Field(1, ge=1, le=64, description="most distinct continuations per draft "
                                                          "(1 = a chain, more = a tree)")
    selection: Literal["recent", "frequent"] = Field(
        "recent", description="prefer the continuation seen most recently, or the one most occurrences share")
    max_occurrences: int = Field(16, ge=1, le=1024, description="most recent occurrences merged per lookup")
    max_nodes: int = Field(32, ge=1, le=512, description="largest draft tree")
    matcher: Literal["ngram", "suffix_automaton"] = Field(
        "ngram", description="'ngram': the most recent occurrences of the longest trailing n-gram (up to "
                             "max_ngram); 'suffix_automaton': the longest repeated suffix of any length, at "
                             "its first occurrence (SAM-Decoding's matcher; max_ngram does not apply)")

    @model_validator(mode="after")
    def _ngram_range(self):
        if self.matcher == "suffix_automaton" and "max_ngram" in self.model_fields_set:
            raise ValueError("max_ngram limits the n-gram matcher only; the suffix automaton matches the longest "
                             "repeated suffix of any length: remove max_ngram, or set matcher: ngram")
        if self.matcher == "ngram" and self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must be <= max_ngram ({self.max_ngram})")
        return self


class RestParams(_AdaptiveParams):
    store: str = Field(description="datastore folder (from `specdec retrieval build`); a relative path "
                                   "is relative to the pipeline file's directory")
    max_span: int = Field(16, ge=1, le=64, description="longest context tail looked up in the store")
    min_span: int = Field(2, ge=1, le=64, description="shortest context tail looked up in the store")
    num_tokens: int = Field(10, ge=1, le=128, description="deepest draft (continuation length)")
    max_candidates: int = Field(1000, ge=1, le=100_000,
                                description="most occurrences whose continuations are merged per lookup")
    max_nodes: int = Field(64, ge=1, le=512, description="largest draft tree")
    max_branches: int = Field(16, ge=1, le=512, description="most root-to-leaf branches per draft tree")

    @model_validator(mode="after")
    def _span_range(self):
        if self.min_span > self.max_span:
            raise ValueError(f"min_span ({self.min_span}) must be <= max_span ({self.max_span})")
        return self


def _cost(context, params: _AdaptiveParams):
    from specdec import cost_model_for

    return cost_model_for(context.target, params.node_cost, params.draft_overhead)


def _build_prompt_lookup(context, params: PromptLookupParams):
    from specdec_plugin_retrieval.prompt_lookup import PromptLookupDrafter

    return PromptLookupDrafter(
        max_ngram=params.max_ngram, min_ngram=params.min_ngram, num_tokens=params.num_tokens,
        max_branches=params.max_branches, selection=params.selection,
        max_occurrences=params.max_occurrences, max_nodes=params.max_nodes, adaptive=params.adaptive,
        cost=_cost(context, params), min_gain=params.min_gain, matcher=params.matcher)


def _build_rest(context, params: RestParams):
    from specdec import ModelMismatchError
    from specdec_plugin_retrieval.rest import RestDrafter
    from specdec_plugin_retrieval.store import open_store

    store = open_store(context.resolve_path(params.store))
    rows = context.target.get_output_embeddings().weight.shape[0]
    if context.tokenizer is not None:
        store.check_tokenizer(context.tokenizer)
    elif store.vocab_size > rows:  # no tokenizer to compare with: at least the ids must fit the target
        raise ModelMismatchError(
            f"the retrieval store {store.path} was built for a {store.vocab_size}-token vocabulary, "
            f"larger than the target's {rows} logits; rebuild it with the target's tokenizer")
    store.check_vocabulary(rows)  # the ids actually stored, which a damaged file may not keep in range
    return RestDrafter(
        store, max_span=params.max_span, min_span=params.min_span, num_tokens=params.num_tokens,
        max_candidates=params.max_candidates, max_nodes=params.max_nodes,
        max_branches=params.max_branches, adaptive=params.adaptive, cost=_cost(context, params),
        min_gain=params.min_gain)


@hookimpl
def register_drafters(register):
    register("prompt_lookup", PromptLookupParams, _build_prompt_lookup,
             description="prompt lookup: copy what followed earlier occurrences of the trailing n-gram")
    register("rest", RestParams, _build_rest,
             description="REST: draft token trees from a suffix-array datastore of text")


@hookimpl
def default_pipeline():
    """Prompt lookup costs nothing to set up and never slows plain decoding down much (it drafts
    only when the cost model expects a gain), so it is the default when this plugin is installed."""
    return {"name": "default", "drafter": {"type": "prompt_lookup"}}


@hookimpl
def register_commands(subparsers):
    from specdec_plugin_retrieval.cli import add_commands

    add_commands(subparsers)
