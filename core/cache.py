"""A KV cache addressed by position, so that rejecting draft tokens costs nothing.

Hugging Face's `DynamicCache` grows by concatenation (a copy of the whole cache per step) and
rolls back by slicing. Here every layer's keys and values live in one preallocated buffer; a
forward writes its new entries at `[length, length + n)` and attends over `[0, length + n)`;
committing moves `length`. Rejected entries are simply overwritten by the next forward. Only a
tree whose accepted path is not already contiguous pays a copy, of the accepted entries alone,
for all layers in one indexing operation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _PositionalLayer(CacheLayerMixin):
    """One layer's view into the shared buffer of a `PositionalKVCache`."""

    is_sliding = False
    is_croppable = True

    def __init__(self, owner: "PositionalKVCache", index: int):
        super().__init__()
        self.owner = owner
        self.index = index

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.owner._allocate(key_states)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states, value_states: [B, H_kv, n, D], for the n tokens of the current forward.
        # Called once per layer per forward: on a GPU a 135M model is bound by this Python work,
        # so it is kept to two narrow-and-copy calls on views made once per buffer.
        owner = self.owner
        if owner.buffer is None:
            owner._allocate(key_states)
        self.is_initialized = True
        keys, values = owner.layer_views[self.index]  # [B, H_kv, capacity, D] each
        if not owner.shapes_checked[self.index]:
            if key_states.shape[:2] != keys.shape[:2] or key_states.shape[-1] != keys.shape[-1]:
                raise ValueError("PositionalKVCache needs every layer to share one KV shape "
                                 f"{tuple(keys.shape[:2])}x{keys.shape[-1]}, layer {self.index} has "
                                 f"{tuple(key_states.shape[:2])}x{key_states.shape[-1]}")
            owner.shapes_checked[self.index] = True
        start = owner.length
        count = key_states.shape[-2]
        keys.narrow(2, start, count).copy_(key_states)
        values.narrow(2, start, count).copy_(value_states)
        owner.writes += 1
        return keys.narrow(2, 0, start + count), values.narrow(2, 0, start + count)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.capacity

    def crop(self, tokens_to_remove: int) -> None:
        self.owner.crop(tokens_to_remove)

    def reset(self) -> None:
        self.owner.length = 0


class PositionalKVCache(Cache):
    """KV cache of one sequence for a full-attention decoder, with index-only rollback.

    `length` counts the committed entries. A forward through the model writes after them without
    moving `length`; `commit` then decides which of the new entries to keep.
    """

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[_PositionalLayer(self, index) for index in range(num_layers)])
        self.num_layers = num_layers
        self.capacity = capacity
        self.length = 0
        self.buffer: torch.Tensor | None = None  # [layers, 2, B, H_kv, capacity, D]
        self.layer_views: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values of `buffer`
        self.shapes_checked = [False] * num_layers
        self.writes = 0  # layer updates so far: lets the runner see that a model used the cache

    def _allocate(self, like: torch.Tensor) -> None:
        batch, heads, _, dim = like.shape
        self._set_buffer(torch.empty(self.num_layers, 2, batch, heads, self.capacity, dim,
                                     dtype=like.dtype, device=like.device))

    def _set_buffer(self, buffer: torch.Tensor | None) -> None:
        self.buffer = buffer
        self.layer_views = [] if buffer is None else [(layer[0], layer[1]) for layer in buffer.unbind(0)]
        self.shapes_checked = [False] * self.num_layers

    def reset(self, capacity: int | None = None) -> None:
        """Forget every entry; keep the buffer unless a larger capacity is needed."""
        self.length = 0
        if capacity is not None and capacity > self.capacity:
            self.capacity = capacity
            self._set_buffer(None)

    def ensure_capacity(self, needed: int) -> None:
        """Grow (geometrically, copying committed entries) so `needed` entries fit."""
        if needed <= self.capacity:
            return
        new_capacity = max(needed, 2 * self.capacity)
        if self.buffer is not None:
            grown = self.buffer.new_empty(self.buffer.shape[:4] + (new_capacity, self.buffer.shape[-1]))
            grown[:, :, :, :, : self.length] = self.buffer[:, :, :, :, : self.length]
            self._set_buffer(grown)
        self.capacity = new_capacity

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        """Hugging Face's rollback call: a negative count removes that many entries."""
        if tokens_to_remove >= 0:
            raise ValueError("crop takes a negative count of entries to remove")
        self.length = max(0, self.length + tokens_to_remove)

    def commit(self, num_contiguous: int, extra_offsets: Sequence[int] = ()) -> None:
        """Keep entries written by the last forward and advance `length`.

        :param num_contiguous: how many new entries, from `length` on, are kept as they are.
        :param extra_offsets: offsets (relative to `length + num_contiguous`) of further new
            entries to keep, in order; they are moved next to the contiguous ones. Offsets must be
            increasing, so each entry moves to an earlier or equal slot.
        """
        start = self.length + num_contiguous
        if extra_offsets and list(extra_offsets) != list(range(len(extra_offsets))):
            assert self.buffer is not None
            source = torch.tensor(extra_offsets, device=self.buffer.device) + start
            # advanced indexing reads all sources before writing: overlap is harmless
            self.buffer[:, :, :, :, start: start + len(extra_offsets)] = self.buffer[:, :, :, :, source]
        self.length = start + len(extra_offsets)

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`([B, H_kv, length, D], [B, H_kv, length, D])`: the committed entries of one layer."""
        if self.buffer is None:
            raise ValueError("the cache is empty")
        return self.buffer[layer, 0, :, :, : self.length], self.buffer[layer, 1, :, :, : self.length]
