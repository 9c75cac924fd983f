"""The `low_precision` drafter: a cheaper copy of the target drafts, the original verifies.

The copy has the target's architecture and weights in a format that reads fewer bytes per step
(int8 or bfloat16, see `formats`), optionally without some layers, and its own KV cache in its
own dtype. The target verifies every draft in full precision, so the output is exactly the
target's (greedy: token for token; sampling: in distribution, since sampled drafts carry the q
they were drawn from).

The prompt's entries come from the target: on the first step the drafter drafts nothing, the
verifier prefills the prompt, and on the second the drafter copies the target's entries for the
prompt into its own cache (a memory copy: a prefill through the copy would cost as much as the
target's own, and int8 activations quantized over a whole prompt draft worse than the target's
exact entries). Without a verifier whose cache it can read, it prefills through the copy.

The cache is addressed by position, like the target's: each proposal first feeds the committed
tokens the copy has not seen (the prompt on the first step; afterwards the target's last token,
plus the last draft token after a fully accepted chain) in the same forward that drafts the first
token, then one forward per further draft token; `observe` rolls the cache back to the accepted
path by moving an index. Entries past it are overwritten by the next proposal and never read
before that (each forward attends only up to its own entries).
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from specdec import BaseDrafter, Draft, DraftContext, SamplingParams, StepOutcome

from specdec_plugin_selfspec.chain import ChainSizer, pick
from specdec_plugin_selfspec.stack import DecoderStack


class LowPrecisionDrafter(BaseDrafter):
    """Drafts chains with `stack` (a cheaper copy of the target) over its own KV cache.

    :param stack: the copy (`DecoderStack` over converted layers and head).
    :param run: the layers the copy runs (model indices; all but the skipped ones).
    :param sizer: decides each chain's length (shared calibration across this instance's requests).
    :param vocab: a truncated draft vocabulary (`DraftVocab`), or None for the full one.
    :param greedy_draft: draft the argmax even when sampling (no q; still lossless).
    :param verifier: the pipeline's verifier: the prompt's entries are copied from its cache
        (None: the copy prefills the prompt itself).
    """

    def __init__(self, stack: DecoderStack, run: Sequence[int], sizer: ChainSizer, vocab=None,
                 greedy_draft: bool = False, verifier=None):
        self.verifier = verifier if getattr(verifier, "cache", None) is not None else None
        self.stack = stack
        self.run = list(run)
        self.sizer = sizer
        self.vocab = None if vocab is None else vocab.to(stack.device)
        self.greedy_draft = greedy_draft
        self.store: torch.Tensor | None = None  # [L, 2, H_kv, capacity, D]: keys and values by layer
        self.length = 0  # entries of committed tokens in the store
        self._base = 0  # committed tokens when the last draft was made
        self._in_cache = 0  # draft tokens of the last draft whose entries the store holds
        self._last: Draft | None = None
        self._proposed = False  # propose ran since the last observe

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self._ensure_capacity(len(prompt) + params.max_new_tokens + self.sizer.max_tokens + 2)
        self.length = 0
        self._last = None
        self._proposed = False
        self.sizer.start()

    def _ensure_capacity(self, needed: int) -> None:
        stack = self.stack
        if self.store is not None and self.store.shape[3] >= needed:
            return
        capacity = max(needed, 2 * (0 if self.store is None else self.store.shape[3]))
        grown = torch.zeros(stack.num_layers, 2, stack.num_kv_heads, capacity, stack.head_dim,
                            dtype=stack.dtype, device=stack.device)
        if self.store is not None and self.length:
            grown[:, :, :, : self.length] = self.store[:, :, :, : self.length]
        self.store = grown

    def propose(self, context: DraftContext) -> Draft:
        self._last, self._base, self._in_cache, self._proposed = None, self.length, 0, True
        limit = min(self.sizer.max_tokens, context.max_depth,
                    context.max_nodes if context.max_nodes is not None else self.sizer.max_tokens)
        if limit < 1 or (self.length == 0 and self.verifier is not None and self._target_committed(context) < 1):
            return Draft.empty()  # (the first step: the verifier has not prefilled the prompt yet)
        if not self.sizer.should_draft():
            return Draft.empty()
        sample = not context.params.greedy and not self.greedy_draft
        tokens = context.tokens
        self._ensure_capacity(len(tokens) + limit + 1)
        if self.length == 0 and self.verifier is not None:
            self._copy_prompt(context)
        device = self.stack.device
        # first the committed tokens the store lacks, then one draft token per forward
        inputs = torch.tensor(tokens[self.length:], dtype=torch.long)
        start = self.length
        picks, chances = [], []
        while True:
            count = inputs.shape[0]
            allowed = None
            if count > 1:  # causal among the new tokens, all of the stored ones
                allowed = torch.ones(count, start + count, dtype=torch.bool, device=device).tril(start)
            tic = time.perf_counter()
            logits = self.stack.forward(inputs, torch.arange(start, start + count), self.store, start,
                                        start + count, allowed, self.run)[-1]
            chosen = pick(logits, context, self.vocab, sample)
            if count <= 2:  # a draft forward (with at most one catch-up token), not a prompt's prefill
                self.sizer.time_forward(time.perf_counter() - tic)
            if not picks:
                self.length = self._base = start + count  # committed tokens: in the store for good
            picks.append(chosen)
            chances.append(self.sizer.rate(chosen.confidence) * (chances[-1] if chances else 1.0))
            if not self.sizer.keep_drafting(chances, len(picks), limit):
                break
            start += count
            inputs = torch.tensor([chosen.token], dtype=torch.long)
        self._in_cache = len(picks) - 1  # the last draft token was never fed
        draft = self.sizer.hand_over(len(tokens), picks, chances, sample)
        if draft.num_nodes:
            self._last = draft
        return draft

    def _target_committed(self, context: DraftContext) -> int:
        """Entries of this sequence's committed tokens in the target's cache (0 before its prefill)."""
        cache = self.verifier.cache
        return 0 if cache.buffer is None else min(cache.lengths[context.slot], len(context.tokens) - 1)

    def _copy_prompt(self, context: DraftContext) -> None:
        """Copy the target's committed entries (the prompt, after the first step) into the store."""
        cache = self.verifier.cache
        committed = self._target_committed(context)
        source = cache.buffer[:, :, context.slot, :, :committed]  # [L, 2, H_kv, n, D]
        layers, _, heads, _, dim = source.shape
        if (layers, heads, dim) != (self.store.shape[0], self.store.shape[2], self.store.shape[4]):
            raise ValueError(f"the verifier's cache holds {layers} layers of {heads}x{dim} entries, the copy "
                             f"{self.store.shape[0]} of {self.store.shape[2]}x{self.store.shape[4]}: the drafter "
                             f"was built for another target")
        self.store[:, :, :, :committed] = source.to(device=self.store.device, dtype=self.store.dtype)
        self.length = self._base = committed

    def observe(self, outcome: StepOutcome) -> None:
        self.sizer.observed(outcome.tokens)
        if not self._proposed:
            return  # not asked this step (inside a composite that used another drafter): nothing to undo
        self._proposed = False
        draft, self._last = self._last, None
        # keep the entries of accepted draft tokens; drop the rest (also when another drafter's
        # draft was verified, inside a composite)
        accepted = len(outcome.path) if draft is not None and outcome.draft.derives_from(draft) else 0
        self.length = self._base + min(accepted, self._in_cache)
