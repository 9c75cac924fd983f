"""The built-in verifier: a Hugging Face causal LM scoring a whole draft tree in one forward."""

from __future__ import annotations

from typing import Sequence

import torch

from specdec.batch import DraftBatch
from specdec.draft import Draft
from specdec.model_runner import CausalLMRunner, check_tree_attention
from specdec.protocols import VerifyOutput

# Extra cache room reserved beyond prompt + max_new_tokens for draft nodes; the cache grows past
# it if a drafter proposes more.
_DRAFT_SLACK = 64
# Longer pending runs (prompts) are prefilled causally in their own forward before the tree
# forward, so that no dense [P, P] attention mask is ever built for a long prompt.
_CAUSAL_PREFILL_ABOVE = 256


def _eos_ids(model) -> tuple[int, ...]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(int(token) for token in (eos if isinstance(eos, (list, tuple)) else [eos]))


class HFVerifier:
    """Verifies drafts with tree attention on any SDPA/eager Hugging Face causal LM.

    The forward feeds each sequence's pending tokens (causal), then its draft nodes at position
    `root + depth`, each attending to all committed tokens and its own ancestors, then any aux
    rows. Only the accepted path is kept in the position-indexed cache: for a chain that is
    free, for a tree the accepted entries are gathered next to the committed ones.

    Sequences live in cache slots; `verify_batch` verifies the sequences of slots
    `first .. first + B - 1` in one forward (the scheduler keeps its active sequences there), and
    `verify`/`commit` are the batch of one in slot 0.
    """

    def __init__(self, model: torch.nn.Module, eos_token_ids: Sequence[int] | None = None):
        self.runner = CausalLMRunner(model)
        check_tree_attention(model)
        self.model = model
        self.vocab_size = self.runner.vocab_size
        self.max_positions = self.runner.max_positions
        self.device = self.runner.device
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids is not None else _eos_ids(model)
        self._prefilled: dict[int, int] = {}  # slot -> pending tokens committed by a separate causal prefill

    @property
    def cache(self):
        """The target's `PositionalKVCache` (self-drafting techniques share it)."""
        return self.runner.cache

    @torch.inference_mode()
    def start(self, prompt_length: int, max_new_tokens: int, slot: int = 0) -> None:
        """Empty `slot` for a new sequence of at most `prompt_length + max_new_tokens` tokens."""
        self.runner.cache.reset_slot(slot, prompt_length + max_new_tokens + _DRAFT_SLACK)
        self._prefilled.pop(slot, None)

    @torch.inference_mode()
    def move_slot(self, source: int, destination: int) -> None:
        """Move a sequence's cache to another slot (see `PositionalKVCache.move_slot`)."""
        self.runner.cache.move_slot(source, destination)

    def verify(self, pending: Sequence[int], draft: Draft,
               hidden_state_layers: Sequence[int] = ()) -> VerifyOutput:
        """Verify one sequence's draft (slot 0): `verify_batch` with a batch of one."""
        return self.verify_batch(DraftBatch((draft,), (tuple(pending),), (0,), tuple(hidden_state_layers)))[0]

    def commit(self, num_pending: int, path: Sequence[int]) -> None:
        self.runner.commit(num_pending - self._prefilled.pop(0, 0), path)

    @torch.inference_mode()
    def verify_batch(self, batch: DraftBatch) -> list[VerifyOutput]:
        """One target forward over every sequence's pending tokens and draft.

        :returns: per sequence, the logits of its root and nodes `[1 + T_b, V]`, its aux logits
            and the hidden states of its pending tokens and nodes.
        """
        layers = batch.hidden_state_layers
        first = batch.slots[0]
        if list(batch.slots) != list(range(first, first + len(batch))):
            raise ValueError(f"verify_batch needs sequences in consecutive cache slots, got {list(batch.slots)}")
        pending = list(batch.pending)
        prefix_hidden: list[dict[int, torch.Tensor]] = [{} for _ in batch.drafts]
        for index, (tokens, draft) in enumerate(zip(batch.pending, batch.drafts)):
            if len(tokens) > 1 and (len(batch) > 1 or (len(tokens) > _CAUSAL_PREFILL_ABOVE
                                                       and (draft.num_nodes or draft.num_aux))):
                prefix_hidden[index] = self._prefill(batch.slots[index], tokens[:-1], layers)
                pending[index] = tokens[-1:]
        if len(batch) == 1:
            rows = [self._row(pending[0], batch.drafts[0], batch.slots[0])]
            logits, hidden = self.runner.forward(*rows[0], 1 + batch.drafts[0].num_nodes + batch.drafts[0].num_aux,
                                                 layers, slot=first)
            logits, hidden = logits[None], {layer: states[None] for layer, states in hidden.items()}
        else:
            rows = [self._row(tokens, draft, slot) for tokens, draft, slot in zip(pending, batch.drafts, batch.slots)]
            kept = max(1 + draft.num_nodes + draft.num_aux for draft in batch.drafts)
            logits, hidden = self.runner.forward_batch(first, rows, kept, layers)
        outputs = []
        width = max(row[0].shape[0] for row in rows)
        for index, draft in enumerate(batch.drafts):
            nodes, aux = draft.num_nodes, draft.num_aux
            own = logits[index, logits.shape[1] - (1 + nodes + aux):]  # [1 + T + A, V]
            kept_rows = len(pending[index]) + nodes
            states = {layer: values[index, width - rows[index][0].shape[0]:][:kept_rows]
                      for layer, values in hidden.items()}
            if prefix_hidden[index]:
                states = {layer: torch.cat([prefix_hidden[index][layer], values]) for layer, values in states.items()}
            outputs.append(VerifyOutput(own[: 1 + nodes], states, own[1 + nodes:] if aux else None))
        return outputs

    @torch.inference_mode()
    def commit_batch(self, batch: DraftBatch, paths: Sequence[Sequence[int]]) -> None:
        """Keep each sequence's pending tokens and accepted path; drop the rest of its draft."""
        for slot, tokens, path in zip(batch.slots, batch.pending, paths):
            self.runner.commit(len(tokens) - self._prefilled.pop(slot, 0), path, slot)

    def _prefill(self, slot: int, tokens: Sequence[int], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Commit a long pending run (a prompt) in its own causal forward: no dense mask over it,
        and in a batch no other sequence is padded to its length."""
        device = self.device
        head = torch.tensor(list(tokens), dtype=torch.long, device=device)
        start = self.runner.cache.lengths[slot]
        _, hidden = self.runner.forward(head, torch.arange(start, start + head.shape[0], device=device),
                                        None, 1, layers, slot=slot)
        self.runner.commit(head.shape[0], (), slot)
        self._prefilled[slot] = head.shape[0]
        return hidden

    def _row(self, pending: Sequence[int], draft: Draft, slot: int):
        """One sequence's forward inputs: (input_ids [n], positions [n], allowed [n, n] or None)."""
        device = self.device
        num_pending, num_nodes, num_aux = len(pending), draft.num_nodes, draft.num_aux
        root_position = self.runner.cache.lengths[slot] + num_pending - 1
        if num_nodes == 0 and num_aux == 0:
            positions = torch.arange(root_position - num_pending + 1, root_position + 1, device=device)
            return torch.tensor(list(pending), dtype=torch.long, device=device), positions, None
        pieces = [torch.tensor(list(pending), dtype=torch.long, device=device), draft.tokens.to(device)]
        offsets = [torch.arange(-num_pending + 1, 1), torch.tensor(draft.depths, dtype=torch.long)]
        if draft.aux is not None:
            pieces.append(draft.aux.tokens.to(device))
            offsets.append(draft.aux.position_offsets.cpu())
        input_ids = torch.cat(pieces)
        positions = (torch.cat(offsets) + root_position).to(device, non_blocking=True)
        allowed = None  # a chain is a plain causal continuation of the pending tokens
        if not draft.is_chain or num_aux:
            count = num_pending + num_nodes + num_aux
            nodes = slice(num_pending, num_pending + num_nodes)
            allowed = torch.zeros(count, count, dtype=torch.bool)
            allowed[:, :num_pending] = True  # every row sees the whole committed prefix...
            allowed[:num_pending, :num_pending] = torch.ones(num_pending, num_pending, dtype=torch.bool).tril()
            allowed[nodes, nodes] = draft.ancestor_mask()  # ...and its own ancestors
            if draft.aux is not None:
                allowed[num_pending + num_nodes:, num_pending:] = draft.aux.attends_to.cpu()
        return input_ids, positions, allowed
