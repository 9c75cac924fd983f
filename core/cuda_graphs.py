"""CUDA graphs of the batched target forward, one per bucketed shape.

A small model on a GPU is bound by the host, not the device: a 30-layer decoder launches several
hundred kernels per forward, and at a few microseconds of Python and driver work each, eager
PyTorch spends longer launching them than the GPU spends running them. A CUDA graph records the
launches once and replays them with one call.

A graph replays fixed shapes at fixed addresses, so a forward is padded to a *bucket*:
- rows (sequences) up to the next of 1, 2, 4, 8, 16, 24, 32, ... (powers of two, then multiples
  of 8, as vLLM does); the extra rows are empty sequences in the next cache slots, whose padding
  tokens attend only to themselves and write after those slots' committed entries;
- columns (tokens per row) up to the next power of two (rows are left-padded, see
  `CausalLMRunner.forward_batch`); widths above `max_width` (prompts) run eagerly;
- the attended span of the cache up to the next power of two (at least 256), at most the cache's
  capacity: attention reads `[0, span)` of each slot, so a bucketed span costs little.

Inputs travel as one packed int64 tensor (`CausalLMRunner._pack`), copied into the graph's own
input buffer before each replay: one host-to-device copy per step. The graph's outputs are
copied out (`clone`) so that no caller holds memory the next replay overwrites.

A graph records the address of the KV cache buffer; when the cache grows (more slots or a longer
capacity), every graph is dropped and recaptured on first use.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

_MIN_SPAN = 256


def row_bucket(rows: int) -> int:
    """The padded number of rows: 1, 2, 4, 8, then multiples of 8."""
    if rows <= 8:
        return 1 << (rows - 1).bit_length()
    return -(-rows // 8) * 8


def width_bucket(width: int) -> int:
    """The padded number of tokens per row: the next power of two."""
    return 1 << (width - 1).bit_length()


def span_bucket(span: int, capacity: int) -> int:
    """The padded attended span: the next power of two, at least 256, at most `capacity`."""
    return min(max(_MIN_SPAN, 1 << (span - 1).bit_length()), capacity)


class _Graph:
    """One captured forward: its packed input buffer and its output tensors."""

    def __init__(self, graph: torch.cuda.CUDAGraph, packed: torch.Tensor, logits: torch.Tensor,
                 hidden: dict[int, torch.Tensor]):
        self.graph = graph
        self.packed = packed  # [P] int64: the input buffer the graph reads
        self.logits = logits  # [rows, width, V] float32
        self.hidden = hidden  # layer -> [rows, width, H]


class CUDAGraphForwards:
    """Captured forwards of one `CausalLMRunner`, keyed by (first slot, rows, width, span, layers).

    :param forward: `forward(packed, first_slot, rows, width, span, logits_rows, layers)`, the
        runner's forward over a packed input tensor already on the device.
    :param max_width: widest row captured; wider forwards (prompt prefill) run eagerly.
    :param max_rows: most rows captured; larger batches run eagerly.
    """

    def __init__(self, forward: Callable, max_width: int = 128, max_rows: int = 256):
        self._forward = forward
        self.max_width = max_width
        self.max_rows = max_rows
        self._graphs: dict[tuple, _Graph] = {}
        self._pool = None
        self._cache_buffer: tuple | None = None  # (data pointer, shape) the graphs were captured on
        self.captures = 0  # graphs captured so far (recaptures included)
        self.replays = 0  # forwards served by a graph

    def covers(self, rows: int, width: int) -> bool:
        return rows <= self.max_rows and width <= self.max_width

    def __len__(self) -> int:
        return len(self._graphs)

    def captured(self) -> dict[tuple, torch.cuda.CUDAGraph]:
        """The graphs captured so far by key `(first slot, rows, width, span, layers)`, a snapshot:
        replaying one times a forward alone, without `run`'s input copy (the engine benchmark does)."""
        return {key: graph.graph for key, graph in self._graphs.items()}

    def clear(self) -> None:
        """Drop every graph (the next forward of each shape captures again)."""
        self._graphs.clear()
        self._pool = None

    def run(self, packed_host: torch.Tensor, cache_buffer: torch.Tensor, first_slot: int, rows: int,
            width: int, span: int, layers: Sequence[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Replay (capturing first if needed) the forward of a bucketed shape.

        :param packed_host: the packed inputs of exactly `rows` x `width` (already bucketed).
        :returns: logits `[rows, width, V]` and hidden states `{layer: [rows, width, H]}`, copies.
        """
        buffer_key = (cache_buffer.data_ptr(), tuple(cache_buffer.shape))
        if buffer_key != self._cache_buffer:
            self.clear()
            self._cache_buffer = buffer_key
        key = (first_slot, rows, width, span, tuple(layers))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(packed_host, first_slot, rows, width, span, tuple(layers))
            self._graphs[key] = graph
        else:
            graph.packed.copy_(packed_host, non_blocking=True)
        graph.graph.replay()
        self.replays += 1
        return graph.logits.clone(), {layer: states.clone() for layer, states in graph.hidden.items()}

    def _capture(self, packed_host, first_slot, rows, width, span, layers) -> _Graph:
        device = torch.device("cuda", torch.cuda.current_device())
        packed = packed_host.to(device)

        def forward():
            return self._forward(packed, first_slot, rows, width, span, width, layers)

        # warm up on a side stream (lazy initialisation, cuBLAS workspaces, autotuning), as
        # torch.cuda.graphs documents; the warm-up writes only this forward's own new entries
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits, hidden = forward()
        self._pool = graph.pool()
        self.captures += 1
        return _Graph(graph, packed, logits, hidden)
