"""Run a Hugging Face causal LM over a position-indexed cache with explicit positions and attention.

The verifier, the draft-model drafter and self-drafting techniques all need the same thing from a
stock `transformers` model: feed n new tokens at chosen positions, let each attend to all cached
tokens plus a chosen subset of the new ones, and read back logits (and hidden states) of some
rows. A 4D additive attention mask with explicit `position_ids` gives exactly that on models
that use SDPA or eager attention.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch

from specdec.attention import GROUPED_QUERY_SDPA, use_grouped_query_sdpa
from specdec.cache import PositionalKVCache
from specdec.cuda_graphs import CUDAGraphForwards, row_bucket, span_bucket, width_bucket
from specdec.distributed import local_heads
from specdec.errors import ModelMismatchError
from specdec.linear_kernels import running_linear_kernels

_MASKABLE_ATTENTION = ("sdpa", "eager", GROUPED_QUERY_SDPA)


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def check_supported(model) -> None:
    """Raise a clear error for models whose attention cannot take a custom tree mask."""
    config = _text_config(model)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in _MASKABLE_ATTENTION:
        raise ModelMismatchError(
            f"specdec needs attention that accepts a custom 4D mask (sdpa or eager); this model uses "
            f"'{implementation}'. Load it with attn_implementation='sdpa'.")
    layer_types = getattr(config, "layer_types", None) or ()
    unsupported = sorted({kind for kind in layer_types if kind not in ("full_attention", "sliding_attention")})
    if unsupported:
        raise ModelMismatchError(
            f"specdec supports attention-only decoders; this model has {', '.join(unsupported)} layers, "
            "which its position-indexed KV cache cannot hold.")


_ALIBI_MODEL_TYPES = ("bloom", "mpt", "baichuan")


def check_tree_attention(model) -> None:
    """Verify a two-sibling tree on a dummy prompt, in both sibling orders, and compare.

    Tree verification needs a model that places tokens by `position_ids` and obeys a custom 4D
    mask. Models that derive positions from cache indices (ALiBi: MPT, Bloom, Falcon with alibi)
    would silently give wrong logits; this catches them, and unknown architectures, up front.

    Two comparisons. (1) The same sibling verified as the tree's last row and as its first row:
    one forward shape, so a model that honours positions and masks gives the same logits up to
    row-independent rounding (zero on every kernel tried, in float32, bfloat16 and float16), while
    one that ignores either sees the other sibling or a position one too far (7-70% of the logits'
    scale on the models tried). (2) The tree's row against the token decoded alone, a sanity
    check across forward shapes; its tolerance follows the dtype, since 16-bit forwards of
    different shapes round differently (2% of the scale for the default model in bfloat16 on a
    CPU without native bf16).
    """
    config = _text_config(model)
    if getattr(config, "alibi", False) or getattr(config, "model_type", "") in _ALIBI_MODEL_TYPES:
        raise ModelMismatchError(
            f"{getattr(config, 'model_type', type(model).__name__)} uses ALiBi position biases, which "
            f"follow cache indices rather than position ids: tree verification would be wrong. specdec "
            f"supports models with rotary or learned position embeddings (Llama, Qwen, Mistral, ...)")
    device = model.device
    vocab = int(getattr(config, "vocab_size", 2))
    prompt = torch.tensor([1 % vocab, 2 % vocab], device=device)
    first, second = 3 % vocab, 4 % vocab
    blocked = torch.finfo(model.dtype).min
    allowed = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool, device=device)
    mask = torch.zeros(4, 4, dtype=model.dtype, device=device).masked_fill_(~allowed, blocked)
    positions = torch.tensor([[0, 1, 2, 2]], device=device)

    def tree(siblings: tuple[int, int]) -> torch.Tensor:
        ids = torch.cat([prompt, torch.tensor(siblings, device=device)])
        return model(input_ids=ids[None], position_ids=positions, attention_mask=mask[None, None],
                     use_cache=False).logits[0].float()

    with torch.inference_mode():
        try:
            last, first_row = tree((first, second))[3], tree((second, first))[2]
        except Exception as error:  # noqa: BLE001 - any failure here means trees are unsupported
            raise ModelMismatchError(
                f"{type(model).__name__} cannot run a forward with a custom 4D attention mask and "
                f"explicit position ids ({type(error).__name__}: {error}); specdec needs both") from None
        alone = model(input_ids=torch.cat([prompt, torch.tensor([second], device=device)])[None],
                      use_cache=False).logits[0, -1].float()
    scale = float(alone.abs().max()) + 1.0
    shapes_tolerance = 1e-2 if torch.finfo(model.dtype).bits >= 32 else 5e-2
    for logits, tolerance, where in ((first_row, 1e-2, "verified in another place of the tree"),
                                     (alone, shapes_tolerance, "decoded alone")):
        if not torch.allclose(last, logits, rtol=tolerance, atol=tolerance * scale):
            raise ModelMismatchError(
                f"{type(model).__name__} gives different logits for a token verified in a tree than for the "
                f"same token {where} (max difference {float((last - logits).abs().max()):.3g}); it does not "
                f"honour position ids or custom attention masks, so specdec cannot verify trees on it")


def cache_argument(model) -> str:
    """The name under which the model's forward takes a KV cache.

    transformers 5.x renames `past_key_values` to `cache`; a model that silently swallowed the
    wrong name in `**kwargs` would decode without context, so the name is read from the signature.
    """
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return "cache"  # a wrapped forward: `forward` checks that the cache was really used
    raise ModelMismatchError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; specdec needs a "
        f"Hugging Face causal LM that accepts a KV cache object")


def attention_window(model) -> int | None:
    """The sliding-window size if any layer uses one, else None.

    specdec attends over the full cache, which equals sliding-window attention only while the
    sequence fits in the window; the verifier refuses longer requests instead of decoding them wrong.
    """
    config = _text_config(model)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window:
        return None
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    return window if getattr(config, "use_sliding_window", True) else None


class CausalLMRunner:
    """A model plus its `PositionalKVCache`: one sequence (slot 0) unless `num_slots` says more.

    :param cuda_graphs: on a CUDA device, replay forwards of up to `CUDAGraphForwards.max_width`
        tokens per row from CUDA graphs (see core/cuda_graphs.py); ignored elsewhere.
    """

    def __init__(self, model: torch.nn.Module, num_slots: int = 1, cuda_graphs: bool = True):
        check_supported(model)
        use_grouped_query_sdpa(model)  # SDPA with query groups folded: no cache copy under a tree mask
        config = _text_config(model)
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        self.num_layers = config.num_hidden_layers
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 30))
        window = attention_window(model)
        if window is not None:
            self.max_positions = min(self.max_positions, int(window))
        output_embeddings = model.get_output_embeddings()
        self.vocab_size = int(output_embeddings.weight.shape[0]) if output_embeddings is not None \
            else int(config.vocab_size)
        self.cache = PositionalKVCache(self.num_layers, capacity=0, num_slots=num_slots)
        self._cache_argument = cache_argument(model)
        self._blocked = torch.finfo(self.dtype).min
        # a sharded forward's collectives run through DTensor hooks, not captured: eager under TP
        sharded = getattr(model, "specdec_tp", None) is not None
        self.graphs = CUDAGraphForwards(self._forward_packed) \
            if cuda_graphs and self.device.type == "cuda" and not sharded else None

    @property
    def length(self) -> int:
        """Entries committed to slot 0 of the cache (tokens the model has seen and kept)."""
        return self.cache.length

    @torch.inference_mode()
    def prepare(self, num_slots: int, capacity: int, widths: Sequence[int] = (1, 2, 4, 8, 16)) -> int:
        """Allocate the cache for `num_slots` sequences of `capacity` entries now, on every device,
        and on CUDA capture the graphs of every bucket up to them (rows up to `num_slots`, the
        given widths, every span bucket), so that no timed or served step grows the cache or
        captures. Growing later stalls every sequence of the batch while the whole buffer is
        copied, which for a large batch is seconds; a capture runs the forward twice (warm-up and
        capture) on empty rows.

        :returns: how many graphs were captured (0 without CUDA graphs).
        """
        cache = self.cache
        cache.ensure_slots(num_slots)
        cache.ensure_capacity(capacity)
        if cache.buffer is None or cache.buffer.shape[2] < cache.num_slots or cache.buffer.shape[4] < cache.capacity:
            config = _text_config(self.model)
            heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
            dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            cache.allocate(local_heads(self.model, heads), dim, self.dtype, self.device)
        graphs = self.graphs
        if graphs is None:
            return 0
        spans, span = [], span_bucket(1, cache.capacity)
        while span not in spans:
            spans.append(span)
            span = span_bucket(2 * span, cache.capacity)
        before = graphs.captures
        buckets = sorted({row_bucket(rows) for rows in range(1, min(num_slots, graphs.max_rows) + 1)})
        for rows in buckets:
            for width in (width for width in widths if graphs.covers(rows, width)):
                packed, needed = self._pack(0, [], rows, width)
                for span in (span for span in spans if span >= needed):
                    graphs.run(packed, cache.buffer, 0, rows, width, span, ())
        return graphs.captures - before

    def reset(self, capacity: int) -> None:
        self.cache.reset(capacity)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [N] int64
        positions: torch.Tensor,  # [N] int64
        allowed: torch.Tensor | None = None,  # [N, N] bool: row i may attend to new token j; None = causal
        logits_rows: int = 1,
        hidden_state_layers: Sequence[int] = (),
        slot: int = 0,
        eager: bool = False,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run the model on N new tokens of one sequence after its committed cache entries.

        Every new token attends to all committed entries; among the new tokens, `allowed` decides
        (None = causal). The new entries are written to the cache but not committed. `eager`
        skips CUDA graphs (a prompt's prefill: a one-off shape not worth a capture).

        :returns: logits `[logits_rows, V]` (float32) of the last `logits_rows` tokens, and the
            hidden states `{layer: [N, H]}` for the requested Hugging Face `hidden_states` indices
            (0 = embeddings, -1 = the final normed state the LM head reads).
        """
        count = input_ids.shape[0]
        if not eager and self.graphs is not None and self.graphs.covers(1, count) and self.cache.buffer is not None:
            logits, hidden = self.forward_batch(slot, [(input_ids, positions, allowed)], logits_rows,
                                                hidden_state_layers)
            return logits[0], {layer: states[0] for layer, states in hidden.items()}
        past = self.cache.lengths[slot]
        self.cache.ensure_capacity(past + count)
        mask = None  # causal: transformers builds it (and SDPA may skip it), O(1) memory for prefill
        if allowed is not None:
            mask = torch.zeros(count, past + count, dtype=self.dtype, device=self.device)
            mask[:, past:].masked_fill_(~allowed.to(self.device), self._blocked)
            mask = mask[None, None]
        self.cache.plan_writes(slot, None)
        try:
            logits, hidden = self._run(input_ids.to(self.device)[None], positions.to(self.device)[None], mask,
                                       logits_rows, hidden_state_layers)
        finally:
            self.cache.plan_writes(0, None)
        return logits[0], {layer: states[0] for layer, states in hidden.items()}

    @torch.inference_mode()
    def forward_batch(
        self,
        first_slot: int,
        rows: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        logits_rows: int,
        hidden_state_layers: Sequence[int] = (),
        eager: bool = False,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One forward over B sequences in slots `first_slot .. first_slot + B - 1`.

        Row b is `(input_ids [n_b], positions [n_b], allowed [n_b, n_b] bool or None = causal)`,
        new tokens of slot `first_slot + b` (on any device). Rows are left-padded to the longest:
        the real tokens of every row end at the last column, so the last `logits_rows` columns
        hold the rows each sequence needs. Padding columns attend only to themselves and write
        past the row's real entries, where the next forward overwrites them.

        On CUDA the forward is replayed from a CUDA graph of a bucketed shape (core/cuda_graphs.py):
        more rows (empty sequences in the following slots) and more columns than asked; `eager`
        skips that (prefills: one-off shapes).

        :returns: logits `[B, logits_rows, V]` (float32) and hidden states `{layer: [B, N, H]}`
            (N = the longest row; row b's own states are its last n_b columns).
        """
        count = len(rows)
        width = max(row[0].shape[0] for row in rows)
        graphs = self.graphs
        if not eager and graphs is not None and graphs.covers(count, width) and self.cache.buffer is not None:
            num_rows, padded_width = row_bucket(count), width_bucket(width)
            self.cache.ensure_slots(first_slot + num_rows)
            packed, span = self._pack(first_slot, rows, num_rows, padded_width)
            self.cache.ensure_capacity(span)
            span = span_bucket(span, self.cache.capacity)
            if self.cache.buffer is not None:  # still allocated after growing: capture on it
                logits, hidden = graphs.run(packed, self.cache.buffer, first_slot, num_rows, padded_width,
                                            span, hidden_state_layers)
                return (logits[:count, padded_width - logits_rows:],
                        {layer: states[:count, padded_width - width:] for layer, states in hidden.items()})
        packed, span = self._pack(first_slot, rows, count, width)
        self.cache.ensure_capacity(span)
        return self._forward_packed(packed.to(self.device), first_slot, count, width, span, logits_rows,
                                    hidden_state_layers)

    def _pack(self, first_slot: int, rows, num_rows: int, width: int) -> tuple[torch.Tensor, int]:
        """The inputs of a batched forward as one int64 tensor (one host-to-device copy).

        Layout: input_ids [R, W], positions [R, W], writes [R, W] (the cache position of each new
        entry), lengths [R] (committed entries per slot), allowed [R, W, W] (0/1). Rows past
        `len(rows)` are empty sequences (all padding) in the following slots. Built with numpy:
        on a GPU this runs between forwards, with the device idle, once per step.
        :returns: the packed tensor (on the host) and the attended span `max(lengths) + W`.
        """
        cells = num_rows * width
        packed = np.zeros(3 * cells + num_rows + cells * width, dtype=np.int64)
        input_ids = packed[:cells].reshape(num_rows, width)
        positions = packed[cells: 2 * cells].reshape(num_rows, width)
        writes = packed[2 * cells: 3 * cells].reshape(num_rows, width)
        lengths = packed[3 * cells: 3 * cells + num_rows]
        allowed = packed[3 * cells + num_rows:].reshape(num_rows, width, width)
        lengths[:] = self.cache.lengths[first_slot: first_slot + num_rows]
        columns = np.arange(width)
        allowed[:, columns, columns] = 1  # padding attends to itself (real tokens too)
        sizes = np.zeros((num_rows, 1), dtype=np.int64)
        for index, (ids, places, row_allowed) in enumerate(rows):
            size = ids.shape[0]
            pad = width - size
            sizes[index, 0] = size
            input_ids[index, pad:] = ids.cpu().numpy()
            positions[index, pad:] = places.cpu().numpy()
            allowed[index, pad:, pad:] = np.tri(size, dtype=np.int64) if row_allowed is None \
                else row_allowed.cpu().numpy()
        # real entry k of row b goes to lengths[b] + k, padding after them: pad j to lengths[b] + n_b + j
        pads = width - sizes
        writes[:] = lengths[:, None] + np.where(columns[None] >= pads, columns[None] - pads, sizes + columns[None])
        return torch.from_numpy(packed), int(lengths.max()) + width

    def _forward_packed(self, packed: torch.Tensor, first_slot: int, count: int, width: int, span: int,
                        logits_rows: int, hidden_state_layers: Sequence[int]):
        """The batched forward over packed inputs on the device (see `_pack`); no host reads, so
        CUDA graphs can capture it. The attention mask `[B, 1, W, span]` is built here: each row
        sees its slot's committed entries and, among the new ones, what `allowed` lets it."""
        cells = count * width
        input_ids = packed[:cells].view(count, width)
        positions = packed[cells: 2 * cells].view(count, width)
        writes = packed[2 * cells: 3 * cells].view(count, width)
        lengths = packed[3 * cells: 3 * cells + count]
        allowed = packed[3 * cells + count:].view(count, width, width).bool()
        visible = torch.arange(span, device=packed.device)[None, None] < lengths[:, None, None]  # [B, 1, span]
        visible = visible.expand(count, width, span).scatter(2, writes[:, None, :].expand(count, width, width), allowed)
        mask = torch.zeros(count, 1, width, span, dtype=self.dtype, device=packed.device)
        mask.masked_fill_(~visible[:, None], self._blocked)
        self.cache.plan_writes(first_slot, writes, span)
        try:
            return self._run(input_ids, positions, mask, logits_rows, hidden_state_layers)
        finally:
            self.cache.plan_writes(0, None)

    def _run(self, input_ids, positions, mask, logits_rows, hidden_state_layers):
        """The model forward over `[B, N]` inputs with specdec's cache; checks the model used it."""
        writes = self.cache.writes
        try:
            with running_linear_kernels(self.model):  # the kernel `target.linear_kernel` chose (CPU)
                output = self.model(
                    input_ids=input_ids,
                    position_ids=positions,
                    attention_mask=mask,
                    use_cache=True,
                    logits_to_keep=logits_rows,
                    output_hidden_states=list(hidden_state_layers) if hidden_state_layers else False,
                    **{self._cache_argument: self.cache},
                )
        except RuntimeError as error:
            tp = getattr(self.model, "specdec_tp", None)
            if tp is None:
                raise
            raise tp.collective_failed(error) from error
        if self.cache.writes == writes:
            import transformers

            raise ModelMismatchError(
                f"{type(self.model).__name__} ignored specdec's KV cache (passed as `{self._cache_argument}`) "
                f"and would decode without context; transformers {transformers.__version__} is outside "
                f"the supported range: install the version in specdec's requirements (>=5.20)")
        logits = output.logits.float()
        if logits.shape[1] != logits_rows:
            raise ModelMismatchError(
                f"{type(self.model).__name__} returned logits for {logits.shape[1]} positions where "
                f"{logits_rows} were asked with logits_to_keep; specdec needs models that honour it")
        hidden = {layer: output.hidden_states[layer] for layer in hidden_state_layers}
        return logits, hidden

    @torch.inference_mode()
    def commit(self, num_contiguous: int, extra_offsets: Sequence[int] = (), slot: int = 0) -> None:
        """Keep new entries of the last forward (see `PositionalKVCache.commit`)."""
        self.cache.commit(num_contiguous, extra_offsets, slot)

    def rollback(self, length: int, slot: int = 0) -> None:
        """Forget committed entries of a slot from `length` on."""
        if not 0 <= length <= self.cache.lengths[slot]:
            raise ValueError(f"cannot roll back to {length}: the cache holds {self.cache.lengths[slot]}")
        self.cache.lengths[slot] = length
