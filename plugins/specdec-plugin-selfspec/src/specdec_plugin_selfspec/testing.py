"""Helpers for tests: build the drafters through their registered factories, check own caches.

Tests build drafters the way a pipeline does (the registered factory, a `BuildContext` with the
verifier), so that what is tested is what YAML gets, on tiny models instead of the default one.
"""

from __future__ import annotations

from typing import Sequence

import torch

from specdec import BuildContext, load_plugins

#: Fixed costs for tests: timing-based decisions would make which drafts happen depend on the
#: machine's load (never what is output, only how fast).
FIXED_COSTS = {"node_cost": 0.1, "draft_cost": 0.2}


def build(kind: str, target, verifier=None, **params):
    """The `kind` drafter (`low_precision` or `layer_skip`) with `params`, as a pipeline builds it."""
    component = load_plugins().registry.get("drafter", kind)
    context = BuildContext(target, None, target.device, target.dtype, load_model=None, build_drafter=None,
                           verifier=verifier)
    return component.factory(context, component.params_model(**{**FIXED_COSTS, **params}))


def factory(kind: str, **params):
    """A harness factory (`make_drafter(target, verifier)`) for the `kind` drafter."""
    return lambda target, verifier: build(kind, target, verifier, **params)


def fresh_entries(model, tokens: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values `[H_kv, n, D]` a fresh forward of `model` computes for `tokens`."""
    import inspect

    from transformers import DynamicCache

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(torch.tensor([list(tokens)], device=model.device), use_cache=True, **{name: cache})
    return [(layer.keys[0], layer.values[0]) for layer in cache.layers]


def assert_store_matches(drafter, model, tokens: Sequence[int], tolerance: float = 1e-4) -> None:
    """A `low_precision` drafter's own cache holds exactly the committed tokens it claims, equal to
    a fresh forward of `model` (for the float32 format, the target itself) over them: no entry of
    a rejected draft token survives a rollback."""
    length = drafter.length
    if length > len(tokens):
        raise AssertionError(f"the drafter's cache claims {length} entries for {len(tokens)} committed tokens")
    if not length:
        return
    for layer, (keys, values) in enumerate(fresh_entries(model, list(tokens[:length]))):
        stored = drafter.store[layer, :, :, :length]
        gap = max(float((stored[0] - keys).abs().max()), float((stored[1] - values).abs().max()))
        if gap > tolerance:
            raise AssertionError(f"the drafter's cache layer {layer} differs from a fresh forward by {gap:.3g} "
                                 f"over its {length} committed entries")
