"""specdec-plugin-selfspec: self-speculation, drafting with the target model itself.

Registers two drafters and the `specdec selfspec` commands. This module stays light (pydantic
only): the factories import torch.

    drafter:
      type: low_precision        # an int8 (or bfloat16) copy of the target drafts
      params: {format: auto}

    drafter:
      type: layer_skip           # the target's own layers minus a skipped set, on the target's cache
      params: {skip: auto}       # or a list of layer indices
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specdec import MinGain, NodeCost, hookimpl, min_gain_field, node_cost_field

__version__ = "0.1.0"

DraftCost = Annotated[float, Field(gt=0.0, le=10.0)] | Literal["auto"]


class DraftingParams(BaseModel):
    """What both drafters share: chain length, costs, draft vocabulary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(6, ge=1, le=32, description="longest chain drafted in one step")
    draft_cost: DraftCost = Field("auto", description="one draft forward as a fraction of a plain target step, "
                                                      "or 'auto': measured while decoding")
    node_cost: NodeCost = node_cost_field("auto")
    min_gain: MinGain = min_gain_field()
    vocab_size: int | None = Field(None, ge=16, description="draft over the N most frequent tokens of "
                                                            "vocab_table only (FR-Spec); null: the full vocabulary")
    vocab_table: str = Field("default", description="token frequency table: 'default' (shipped, for the "
                                                    "default model) or a file from `specdec selfspec vocab`")
    greedy_draft: bool = Field(False, description="draft the argmax even when sampling (lossless; no q)")


def _check_layers(value: list[int]) -> list[int]:
    if any(index < 0 for index in value):
        raise ValueError("layer indices are 0-based and non-negative")
    if len(set(value)) != len(value):
        raise ValueError("a layer is listed twice")
    return sorted(value)


class LowPrecisionParams(DraftingParams):
    """The `drafter.params` block of `type: low_precision`."""

    format: Literal["auto", "int8", "bfloat16", "float32"] = Field(
        "auto", description="the copy's format: 'auto' = bfloat16 on CUDA; on a CPU int8 (torch's dynamic "
                            "int8 kernels), or bfloat16 where the CPU has native bf16 units (AMX, "
                            "AVX512-BF16) and one layer's products measure faster in it than in int8; "
                            "'float32' is the target's own weights (for tests: every greedy draft accepted)")
    skip: list[int] = Field(default_factory=list, description="layers the copy does not run (0-based)")

    @field_validator("skip")
    @classmethod
    def _valid_skip(cls, value):
        return _check_layers(value)


class LayerSkipParams(DraftingParams):
    """The `drafter.params` block of `type: layer_skip`."""

    skip: Literal["auto"] | list[int] = Field(
        "auto", description="layers to skip (0-based), or 'auto': search while decoding (SWIFT-style) for "
                            "the set with the most accepted tokens per unit of draft + verify time")
    weights: Literal["target", "int8"] = Field(
        "target", description="'target': the target's own weights (nothing copied); 'int8': a dynamic-int8 "
                              "copy of the layers (CPU; a quarter of the bytes per draft forward)")
    max_skip: float = Field(0.5, gt=0.0, lt=1.0, description="with auto: skip at most this share of the layers")
    window: int = Field(24, ge=4, le=256, description="with auto: recent generated tokens each candidate "
                                                      "set is scored on")
    search_steps: int = Field(16, ge=1, le=1000, description="with auto: candidate sets scored, one per step, "
                                                             "over the drafter's first drafting steps (all "
                                                             "generations together)")
    recheck_every: int = Field(32, ge=1, description="with auto: after the search, rescore the chosen set "
                                                     "and try one neighbour every this many steps")
    seed: int = Field(0, description="with auto: seed of the search's random moves")

    @field_validator("skip")
    @classmethod
    def _valid_skip(cls, value):
        return value if value == "auto" else _check_layers(value)


def _common(context, params: DraftingParams, fmt: str, keep: set[int] | None):
    """The pieces both factories build: the stack's head, the sizer, the draft vocabulary."""
    from specdec import cost_model_for

    from specdec_plugin_selfspec.chain import ChainSizer
    from specdec_plugin_selfspec.formats import head_projection
    from specdec_plugin_selfspec.vocab import load_vocab, resolve_table

    target = context.target
    vocab = None
    vocab_width = int(target.get_output_embeddings().weight.shape[0])
    if params.vocab_size is not None:
        eos = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        vocab = load_vocab(resolve_table(params.vocab_table, context.resolve_path), params.vocab_size, vocab_width,
                           context.tokenizer, always=eos)
    head = head_projection(target, fmt, None if vocab is None else vocab.token_ids)
    sizer = ChainSizer(cost_model_for(target, params.node_cost), params.max_tokens,
                       None if params.draft_cost == "auto" else float(params.draft_cost), params.min_gain)
    return head, sizer, vocab


def _check_skip(skip: list[int], num_layers: int) -> None:
    from specdec import ConfigError

    if any(index >= num_layers for index in skip):
        raise ConfigError(f"drafter.params.skip: the target has {num_layers} layers (0-{num_layers - 1}); "
                          f"{[index for index in skip if index >= num_layers]} do not exist")
    if len(skip) >= num_layers:
        raise ConfigError("drafter.params.skip: skipping every layer leaves nothing to draft with")


def build_low_precision(context, params: LowPrecisionParams):
    from specdec import ConfigError

    from specdec_plugin_selfspec.formats import check_format, choose_format, compute_dtype, copy_layers
    from specdec_plugin_selfspec.low_precision import LowPrecisionDrafter
    from specdec_plugin_selfspec.stack import DecoderStack, check_architecture, text_config

    target = context.target
    check_architecture(target)
    num_layers = text_config(target).num_hidden_layers
    _check_skip(params.skip, num_layers)
    fmt = choose_format(params.format, target)
    try:
        check_format(fmt, target.device, target.dtype)
    except ValueError as error:
        raise ConfigError(f"drafter.params.format: {error}") from None
    run = [index for index in range(num_layers) if index not in params.skip]
    head, sizer, vocab = _common(context, params, fmt, set(run))
    dtype = compute_dtype(fmt, target.dtype)
    stack = DecoderStack(target, copy_layers(target, fmt, set(run)), head, target.model.norm.weight.detach().to(dtype),
                         dtype)
    drafter = LowPrecisionDrafter(stack, run, sizer, vocab, params.greedy_draft, verifier=context.verifier)
    drafter.format = fmt
    return drafter


def build_layer_skip(context, params: LayerSkipParams):
    from specdec import ConfigError

    import torch

    from specdec_plugin_selfspec.formats import check_format, copy_layers
    from specdec_plugin_selfspec.layer_skip import LayerSearch, LayerSkipDrafter
    from specdec_plugin_selfspec.stack import DecoderStack, check_architecture, text_config

    target = context.target
    check_architecture(target)
    verifier = context.verifier
    if verifier is None or not hasattr(verifier, "cache"):
        raise ConfigError("drafter.type: layer_skip drafts on the target's KV cache and needs the `hf` "
                          "verifier (one with a positional cache); this pipeline's verifier has none")
    num_layers = text_config(target).num_hidden_layers
    if params.skip != "auto":
        _check_skip(params.skip, num_layers)
    fmt = "int8" if params.weights == "int8" else "float32"
    if fmt == "int8":
        try:
            check_format(fmt, target.device, target.dtype)
        except ValueError as error:
            raise ConfigError(f"drafter.params.weights: {error}") from None
        if target.dtype != torch.float32:
            raise ConfigError(f"drafter.params.weights: int8 layers compute in float32 but the target's cache "
                              f"is {target.dtype}; use weights: target")
    keep = None if params.skip == "auto" else {index for index in range(num_layers) if index not in params.skip}
    head, sizer, vocab = _common(context, params, fmt, None)
    stack = DecoderStack(target, copy_layers(target, fmt, keep), head, target.model.norm.weight, target.dtype)
    search = None
    if params.skip == "auto":
        search = LayerSearch(num_layers, max_skip=params.max_skip, window=params.window,
                             search_steps=params.search_steps, recheck_every=params.recheck_every, seed=params.seed)
    fixed = None if params.skip == "auto" else [index for index in range(num_layers) if index not in params.skip]
    return LayerSkipDrafter(verifier, stack, sizer, vocab, params.greedy_draft, run=fixed, search=search)


@hookimpl
def register_drafters(register):
    register("low_precision", LowPrecisionParams, build_low_precision,
             description="a cheaper copy of the target (int8, or bfloat16 where native and faster) drafts chains over "
                         "its own cache; the target verifies")
    register("layer_skip", LayerSkipParams, build_layer_skip,
             description="the target's own layers minus a skipped set (given, or searched while decoding) "
                         "draft chains over the target's KV cache")


@hookimpl
def register_commands(subparsers):
    from specdec_plugin_selfspec.cli import add_commands

    add_commands(subparsers)
