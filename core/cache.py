"""A KV cache addressed by position, so that rejecting draft tokens costs nothing.

Hugging Face's `DynamicCache` grows by concatenation (a copy of the whole cache per step) and
rolls back by slicing. Here every layer's keys and values live in one preallocated buffer with
one *slot* per sequence of a batch; each slot has its own committed length. A forward writes its
new entries after each slot's committed ones and attends over them; committing moves the slot's
length. Rejected entries are simply overwritten by the next forward. Only a tree whose accepted
path is not already contiguous pays a copy, of the accepted entries alone, for all layers in one
indexing operation.

A forward runs over a contiguous range of slots (the scheduler keeps its active sequences in
slots `0..B-1`). Before a batched forward the runner calls `plan_writes` with each row's write
positions; a forward without a plan writes every row at `[length, length + n)` of its slot,
which is the batch-of-one case (`length` is slot 0's committed length).
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
        # so the batch-of-one path is kept to two narrow-and-copy calls on views made once per buffer.
        owner = self.owner
        if owner.buffer is None:
            owner._allocate(key_states)
        self.is_initialized = True
        keys, values = owner.layer_views[self.index]  # [S, H_kv, capacity, D] each
        if not owner.shapes_checked[self.index]:
            if key_states.shape[1] != keys.shape[1] or key_states.shape[-1] != keys.shape[-1]:
                raise ValueError("PositionalKVCache needs every layer to share one KV shape "
                                 f"{keys.shape[1]}x{keys.shape[-1]}, layer {self.index} has "
                                 f"{key_states.shape[1]}x{key_states.shape[-1]}")
            owner.shapes_checked[self.index] = True
        first, rows = owner.first_slot, key_states.shape[0]
        count = key_states.shape[-2]
        owner.writes += 1
        plan = owner.write_plan
        if plan is None:  # one row, written contiguously after its committed entries
            if rows != 1:
                raise ValueError("a batched forward needs PositionalKVCache.plan_writes first")
            start = owner.lengths[first]
            keys, values = keys.narrow(0, first, 1), values.narrow(0, first, 1)
            keys.narrow(2, start, count).copy_(key_states)
            values.narrow(2, start, count).copy_(value_states)
            return keys.narrow(2, 0, start + count), values.narrow(2, 0, start + count)
        slot_index, positions, span = plan  # [B, n], [B, n]: where each new entry goes
        # [S, capacity, H_kv, D] views: one indexed write per tensor for the whole batch
        keys.transpose(1, 2).index_put_((slot_index, positions), key_states.transpose(1, 2))
        values.transpose(1, 2).index_put_((slot_index, positions), value_states.transpose(1, 2))
        return (keys.narrow(0, first, rows).narrow(2, 0, span),
                values.narrow(0, first, rows).narrow(2, 0, span))

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.get_seq_length()

    def get_max_length(self) -> int:
        return self.owner.capacity

    def crop(self, tokens_to_remove: int) -> None:
        self.owner.crop(tokens_to_remove)

    def reset(self) -> None:
        self.owner.length = 0


class PositionalKVCache(Cache):
    """KV cache of up to `num_slots` sequences for a full-attention decoder, with index-only rollback.

    `lengths[s]` counts the committed entries of slot s (`length` is slot 0's, for batch-of-one
    users). A forward through the model writes after them without moving them; `commit` then
    decides which of the new entries to keep.
    """

    def __init__(self, num_layers: int, capacity: int, num_slots: int = 1):
        super().__init__(layers=[_PositionalLayer(self, index) for index in range(num_layers)])
        self.num_layers = num_layers
        self.capacity = capacity
        self.num_slots = num_slots
        self.lengths = [0] * num_slots
        self.buffer: torch.Tensor | None = None  # [layers, 2, S, H_kv, capacity, D]
        self.layer_views: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values of `buffer`
        self.shapes_checked = [False] * num_layers
        self.writes = 0  # layer updates so far: lets the runner see that a model used the cache
        self.first_slot = 0  # the slot of row 0 of the current forward
        # (slot index [B, n], position [B, n], attended span) of the current batched forward
        self.write_plan: tuple[torch.Tensor, torch.Tensor, int] | None = None

    @property
    def length(self) -> int:
        return self.lengths[0]

    @length.setter
    def length(self, value: int) -> None:
        self.lengths[0] = value

    def _allocate(self, like: torch.Tensor) -> None:
        _, heads, _, dim = like.shape
        self.allocate(heads, dim, like.dtype, like.device)

    def allocate(self, heads: int, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate the buffer for the current slots and capacity now, not at the first forward
        (a static cache: CUDA graphs captured on it stay valid while nothing grows)."""
        # zeros, not empty: a batched forward reads past a short row's entries (masked out), and
        # uninitialised memory may hold NaN, which a zero attention weight does not cancel
        self._set_buffer(torch.zeros(self.num_layers, 2, self.num_slots, heads, self.capacity, dim,
                                     dtype=dtype, device=device))

    def _set_buffer(self, buffer: torch.Tensor | None) -> None:
        self.buffer = buffer
        self.layer_views = [] if buffer is None else [(layer[0], layer[1]) for layer in buffer.unbind(0)]
        self.shapes_checked = [False] * self.num_layers

    def reset(self, capacity: int | None = None) -> None:
        """Forget every entry of every slot; keep the buffer unless a larger capacity is needed."""
        self.lengths = [0] * self.num_slots
        if capacity is not None and capacity > self.capacity:
            self.capacity = capacity
            self._set_buffer(None)

    def reset_slot(self, slot: int, capacity: int) -> None:
        """Empty one slot for a new sequence of at most `capacity` entries (other slots keep theirs)."""
        self.ensure_slots(slot + 1)
        self.lengths[slot] = 0
        self.ensure_capacity(capacity)

    def ensure_slots(self, count: int) -> None:
        """Grow (geometrically, copying committed entries) so that `count` slots exist."""
        if count <= self.num_slots:
            return
        new_count = max(count, 2 * self.num_slots)
        if self.buffer is not None:
            grown = self.buffer.new_zeros(self.buffer.shape[:2] + (new_count,) + self.buffer.shape[3:])
            grown[:, :, : self.num_slots] = self.buffer
            self._set_buffer(grown)
        self.lengths += [0] * (new_count - self.num_slots)
        self.num_slots = new_count

    def ensure_capacity(self, needed: int) -> None:
        """Grow (geometrically, copying committed entries) so `needed` entries fit in every slot."""
        if needed <= self.capacity:
            return
        new_capacity = max(needed, 2 * self.capacity)
        if self.buffer is not None:
            grown = self.buffer.new_zeros(self.buffer.shape[:4] + (new_capacity, self.buffer.shape[-1]))
            longest = max(self.lengths)
            grown[:, :, :, :, :longest] = self.buffer[:, :, :, :, :longest]
            self._set_buffer(grown)
        self.capacity = new_capacity

    def plan_writes(self, first_slot: int, positions: torch.Tensor | None, span: int = 0) -> None:
        """Say where the next forward's rows write: row b goes to slot `first_slot + b`, its new
        entry j to position `positions[b, j]`; attention reads positions `[0, span)`. None: one
        row written after slot `first_slot`'s committed entries."""
        self.first_slot = first_slot
        if positions is None:
            self.write_plan = None
            return
        rows = torch.arange(first_slot, first_slot + positions.shape[0], device=positions.device)
        self.write_plan = (rows[:, None].expand_as(positions), positions, span)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Committed entries of the slot the current forward writes (transformers builds causal
        masks from it)."""
        return self.lengths[self.first_slot]

    def crop(self, tokens_to_remove: int) -> None:
        """Hugging Face's rollback call: a negative count removes that many entries of slot 0."""
        if tokens_to_remove >= 0:
            raise ValueError("crop takes a negative count of entries to remove")
        self.length = max(0, self.length + tokens_to_remove)

    def commit(self, num_contiguous: int, extra_offsets: Sequence[int] = (), slot: int = 0) -> None:
        """Keep entries written by the last forward into `slot` and advance its length.

        :param num_contiguous: how many new entries, from the slot's length on, are kept as they are.
        :param extra_offsets: offsets (relative to `length + num_contiguous`) of further new
            entries to keep, in order; they are moved next to the contiguous ones. Offsets must be
            increasing, so each entry moves to an earlier or equal slot.
        """
        start = self.lengths[slot] + num_contiguous
        if extra_offsets and list(extra_offsets) != list(range(len(extra_offsets))):
            assert self.buffer is not None
            source = torch.tensor(extra_offsets, device=self.buffer.device) + start
            # advanced indexing reads all sources before writing: overlap is harmless
            self.buffer[:, :, slot, :, start: start + len(extra_offsets)] = self.buffer[:, :, slot, :, source]
        self.lengths[slot] = start + len(extra_offsets)

    def move_slot(self, source: int, destination: int) -> None:
        """Move a sequence's committed entries to another slot (the scheduler keeps its active
        sequences in the first slots); the source slot is left empty."""
        if source == destination:
            return
        length = self.lengths[source]
        if self.buffer is not None and length:
            self.buffer[:, :, destination, :, :length] = self.buffer[:, :, source, :, :length]
        self.lengths[destination], self.lengths[source] = length, 0

    def keys_values(self, layer: int, slot: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`([1, H_kv, length, D], [1, H_kv, length, D])`: the committed entries of one layer and slot."""
        if self.buffer is None:
            raise ValueError("the cache is empty")
        length = self.lengths[slot]
        return (self.buffer[layer, 0, slot: slot + 1, :, :length],
                self.buffer[layer, 1, slot: slot + 1, :, :length])
