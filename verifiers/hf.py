"""The built-in verifier: a Hugging Face causal LM scoring a whole draft tree in one forward."""

from __future__ import annotations

from typing import Sequence

import torch

from specdec.batch import DraftBatch
from specdec.draft import Draft
from specdec.model_runner import CausalLMRunner, check_tree_attention
from specdec.models import eos_token_ids as model_eos_token_ids
from specdec.protocols import VerifyOutput

# Extra cache room reserved beyond prompt + max_new_tokens for draft nodes; the cache grows past
# it if a drafter proposes more.
_DRAFT_SLACK = 64
# Longer pending runs (prompts) are prefilled causally in their own forward before the tree
# forward, so that no dense [P, P] attention mask is ever built for a long prompt. In a batch, and
# under CUDA graphs, every prompt is (a prompt's length is a one-off shape: eager, not captured).
_CAUSAL_PREFILL_ABOVE = 256
# Most cells (prompts x longest prompt^2) of one grouped prefill on CUDA: its padded mask and
# packed inputs stay within tens of MB.
_PREFILL_GROUP_CELLS = 1 << 22


class HFVerifier:
    """Verifies drafts with tree attention on any SDPA/eager Hugging Face causal LM.

    The forward feeds each sequence's pending tokens (causal), then its draft nodes at position
    `root + depth`, each attending to all committed tokens and its own ancestors, then any aux
    rows. Only the accepted path is kept in the position-indexed cache: for a chain that is
    free, for a tree the accepted entries are gathered next to the committed ones.

    Sequences live in cache slots; `verify_batch` verifies the sequences of slots
    `first .. first + B - 1` in one forward (the scheduler keeps its active sequences there), and
    `verify`/`commit` are the batch of one in slot 0.

    :param cuda_graphs: on a CUDA device, replay verification forwards from CUDA graphs of
        bucketed shapes (core/cuda_graphs.py); False runs every forward eagerly.
    """

    def __init__(self, model: torch.nn.Module, eos_token_ids: Sequence[int] | None = None,
                 cuda_graphs: bool = True):
        self.runner = CausalLMRunner(model, cuda_graphs=cuda_graphs)
        check_tree_attention(model)
        self.model = model
        self.vocab_size = self.runner.vocab_size
        self.max_positions = self.runner.max_positions
        self.device = self.runner.device
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids is not None else model_eos_token_ids(model)
        self.group_prefills = self.device.type == "cuda"  # see `_prefill_groups`
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

    def prepare(self, max_batch_size: int, max_tokens: int) -> int:
        """Allocate the cache (and on CUDA capture the graphs) for `max_batch_size` sequences of
        up to `max_tokens` tokens (prompt + new) before serving or timing (see
        `CausalLMRunner.prepare`). :returns: the number of graphs captured."""
        return self.runner.prepare(max_batch_size, max_tokens + _DRAFT_SLACK)

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
        prefills = [index for index, (tokens, draft) in enumerate(zip(batch.pending, batch.drafts))
                    if len(tokens) > 1 and (len(batch) > 1 or self.runner.graphs is not None
                                            or (len(tokens) > _CAUSAL_PREFILL_ABOVE and (draft.num_nodes or draft.num_aux)))]
        for group in self._prefill_groups(prefills, batch):
            hidden = self._prefill([batch.slots[index] for index in group],
                                   [batch.pending[index][:-1] for index in group], layers)
            for index, states in zip(group, hidden):
                prefix_hidden[index] = states
                pending[index] = batch.pending[index][-1:]
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

    def _prefill_groups(self, indices: Sequence[int], batch: DraftBatch) -> list[list[int]]:
        """Sequences whose prompts are prefilled together: on CUDA, runs of consecutive slots up to
        `_PREFILL_GROUP_CELLS` mask cells (a small model's forward there costs its kernel launches,
        so eight prompts in one forward cost about one); elsewhere one each (on a CPU a prefill is
        bound by arithmetic, and padding prompts to one length would only add to it)."""
        if not self.group_prefills:
            return [[index] for index in indices]
        groups: list[list[int]] = []
        for index in indices:
            group = groups[-1] if groups else None
            width = len(batch.pending[index]) - 1
            if group and batch.slots[group[-1]] + 1 == batch.slots[index]:
                widest = max(width, max(len(batch.pending[member]) - 1 for member in group))
                if (len(group) + 1) * widest * widest <= _PREFILL_GROUP_CELLS:
                    group.append(index)
                    continue
            groups.append([index])
        return groups

    def _prefill(self, slots: Sequence[int], prompts: Sequence[Sequence[int]],
                 layers: Sequence[int]) -> list[dict[int, torch.Tensor]]:
        """Commit long pending runs (prompts) of consecutive slots in one causal forward, eagerly
        (a prompt's length is a one-off shape, not worth a CUDA graph): no dense mask over a
        prompt of its own, and no other sequence of the batch padded to a prompt's length.

        :returns: per slot, the hidden states `{layer: [n, H]}` of its prompt tokens.
        """
        starts = [self.runner.cache.lengths[slot] for slot in slots]
        rows = [(torch.tensor(list(tokens), dtype=torch.long), torch.arange(start, start + len(tokens)))
                for tokens, start in zip(prompts, starts)]
        if len(rows) == 1:
            _, hidden = self.runner.forward(*rows[0], None, 1, layers, slot=slots[0], eager=True)
            per_slot = [hidden]
        else:
            _, hidden = self.runner.forward_batch(slots[0], [(ids, places, None) for ids, places in rows], 1,
                                                  layers, eager=True)
            width = max(len(tokens) for tokens in prompts)
            per_slot = [{layer: states[index, width - len(tokens):] for layer, states in hidden.items()}
                        for index, tokens in enumerate(prompts)]
        for slot, tokens in zip(slots, prompts):
            self.runner.commit(len(tokens), (), slot)
            self._prefilled[slot] = len(tokens)
        return per_slot

    def _row(self, pending: Sequence[int], draft: Draft, slot: int):
        """One sequence's forward inputs, on the host (the runner packs every row into one
        host-to-device copy): (input_ids [n], positions [n], allowed [n, n] or None)."""
        num_pending, num_nodes, num_aux = len(pending), draft.num_nodes, draft.num_aux
        root_position = self.runner.cache.lengths[slot] + num_pending - 1
        if num_nodes == 0 and num_aux == 0:
            positions = torch.arange(root_position - num_pending + 1, root_position + 1)
            return torch.tensor(list(pending), dtype=torch.long), positions, None
        pieces = [torch.tensor(list(pending), dtype=torch.long), draft.tokens.cpu()]
        offsets = [torch.arange(-num_pending + 1, 1), torch.tensor(draft.depths, dtype=torch.long)]
        if draft.aux is not None:
            pieces.append(draft.aux.tokens.cpu())
            offsets.append(draft.aux.position_offsets.cpu())
        input_ids = torch.cat(pieces)
        positions = torch.cat(offsets) + root_position
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
