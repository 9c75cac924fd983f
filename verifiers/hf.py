"""The built-in verifier: a Hugging Face causal LM scoring a whole draft tree in one forward."""

from __future__ import annotations

from typing import Sequence

import torch

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

    The forward feeds the pending tokens (causal), then the draft nodes at position
    `root + depth`, each attending to all committed tokens and its own ancestors, then any aux
    rows. Only the accepted path is kept in the position-indexed cache: for a chain that is
    free, for a tree the accepted entries are gathered next to the committed ones.
    """

    def __init__(self, model: torch.nn.Module, eos_token_ids: Sequence[int] | None = None):
        self.runner = CausalLMRunner(model)
        check_tree_attention(model)
        self.model = model
        self.vocab_size = self.runner.vocab_size
        self.max_positions = self.runner.max_positions
        self.device = self.runner.device
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids is not None else _eos_ids(model)
        self._prefilled = 0  # pending tokens already committed by a separate causal prefill

    @property
    def cache(self):
        """The target's `PositionalKVCache` (self-drafting techniques share it)."""
        return self.runner.cache

    def start(self, prompt_length: int, max_new_tokens: int) -> None:
        self.runner.reset(prompt_length + max_new_tokens + _DRAFT_SLACK)
        self._prefilled = 0

    @torch.inference_mode()
    def verify(self, pending: Sequence[int], draft: Draft,
               hidden_state_layers: Sequence[int] = ()) -> VerifyOutput:
        device = self.device
        prefix_hidden: dict[int, torch.Tensor] = {}
        if len(pending) > _CAUSAL_PREFILL_ABOVE and (draft.num_nodes or draft.num_aux):
            head = torch.tensor(pending[:-1], dtype=torch.long, device=device)
            start = self.runner.length
            _, prefix_hidden = self.runner.forward(
                head, torch.arange(start, start + head.shape[0], device=device), None, 1, hidden_state_layers)
            self.runner.commit(head.shape[0])
            self._prefilled, pending = head.shape[0], pending[-1:]
        num_pending, num_nodes, num_aux = len(pending), draft.num_nodes, draft.num_aux
        past = self.runner.length
        root_position = past + num_pending - 1
        if num_nodes == 0 and num_aux == 0:
            input_ids = torch.tensor(pending, dtype=torch.long, device=device)
            positions = torch.arange(past, past + num_pending, device=device)
            logits, hidden = self.runner.forward(input_ids, positions, None, 1, hidden_state_layers)
            return VerifyOutput(logits, hidden)

        pieces = [torch.tensor(pending, dtype=torch.long, device=device), draft.tokens.to(device)]
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

        logits, hidden = self.runner.forward(
            input_ids, positions, allowed, 1 + num_nodes + num_aux, hidden_state_layers)
        aux_logits = logits[1 + num_nodes:] if num_aux else None
        hidden = {layer: torch.cat([prefix_hidden[layer], states[: num_pending + num_nodes]])
                  if prefix_hidden else states[: num_pending + num_nodes] for layer, states in hidden.items()}
        return VerifyOutput(logits[: 1 + num_nodes], hidden, aux_logits)

    def commit(self, num_pending: int, path: Sequence[int]) -> None:
        self.runner.commit(num_pending - self._prefilled, path)
        self._prefilled = 0
