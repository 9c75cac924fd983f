"""The `draft_model` drafter: a smaller causal LM with the target's tokenizer drafts k tokens.

It keeps its own position-indexed KV cache. After verification it rolls the cache back to the
accepted prefix by moving an index, and feeds the tokens it has not seen (the target's token,
and the last draft token after a full accept) at the start of the next proposal, in the same
forward as the first new draft token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from specdec.draft import Draft
from specdec.errors import ModelMismatchError
from specdec.model_runner import CausalLMRunner
from specdec.protocols import BaseDrafter, DraftContext, StepOutcome
from specdec.sampling import SamplingParams, warp_logits


def check_same_vocabulary(target_tokenizer, draft_tokenizer, draft_name: str) -> None:
    """Refuse a draft model whose tokenizer maps tokens to different ids than the target's."""
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if target_vocab == draft_vocab:
        return
    differing = sorted(set(target_vocab.items()) ^ set(draft_vocab.items()))[:3]
    raise ModelMismatchError(
        f"draft model '{draft_name}' has a different vocabulary from the target "
        f"({len(draft_vocab)} vs {len(target_vocab)} tokens; for example {differing}); a draft "
        f"model must use the target's tokenizer")


class DraftModelDrafter(BaseDrafter):
    """Drafts a chain of `num_tokens` tokens with a small model.

    Under sampling (temperature > 0) each draft token is drawn from q, the draft model's
    distribution warped exactly like the target's, and q travels with the draft so that
    rejection sampling stays lossless. With `greedy_draft=True`, drafts are argmax even when
    sampling (q is then a point mass and the draft carries none): still lossless, sometimes
    better accepted.

    :param model: the draft model (SDPA or eager attention).
    :param num_tokens: draft length k per step.
    :param target_vocab_size: the target's logits width; a wider draft is refused, a narrower one
        (a padding difference within one tokenizer family) is zero-padded.
    """

    def __init__(self, model: torch.nn.Module, num_tokens: int = 4, greedy_draft: bool = False,
                 target_vocab_size: int | None = None):
        if num_tokens < 1:
            raise ValueError("num_tokens must be >= 1")
        self.runner = CausalLMRunner(model)
        if target_vocab_size is not None and self.runner.vocab_size > target_vocab_size:
            raise ModelMismatchError(
                f"the draft model's vocabulary has {self.runner.vocab_size} entries but the "
                f"target's has {target_vocab_size}; a draft model must share the target's "
                f"tokenizer and vocabulary")
        # Model families pad their embedding matrices differently (Qwen: 151936 vs 152064 rows)
        # while sharing a tokenizer; q is zero-padded to the target's width, and the padded ids
        # are never drafted, so verification stays lossless.
        self.pad_q = 0 if target_vocab_size is None else target_vocab_size - self.runner.vocab_size
        self.num_tokens = num_tokens
        self.greedy_draft = greedy_draft
        self._proposed_from = 0  # committed length when the last draft was made
        self._drafted_in_cache = 0  # draft tokens of the last draft that the cache holds
        self._last_draft: Draft | None = None

    def start(self, prompt: Sequence[int], params: SamplingParams) -> None:
        self.runner.reset(len(prompt) + params.max_new_tokens + self.num_tokens + 1)
        self._last_draft = None

    @torch.inference_mode()
    def propose(self, context: DraftContext) -> Draft:
        # the draft model may attend over fewer positions than the target
        count = min(self.num_tokens, context.max_depth, self.runner.max_positions - len(context.tokens))
        if count < 1:
            self._last_draft = None
            return Draft.empty()
        sample = not context.params.greedy and not self.greedy_draft
        device = self.runner.device
        new_tokens = context.tokens[self.runner.length:]
        if max(new_tokens) >= self.runner.vocab_size:
            raise ModelMismatchError(
                f"the target produced token id {max(new_tokens)}, which the draft model's "
                f"{self.runner.vocab_size}-entry vocabulary does not have")
        unseen = torch.tensor(new_tokens, dtype=torch.long, device=device)
        self._proposed_from = len(context.tokens)
        drafted: list[torch.Tensor] = []  # [1] each, on the model's device: no host sync when greedy
        draws: list[torch.Tensor] = []
        for _ in range(count):
            start = self.runner.length
            positions = torch.arange(start, start + unseen.shape[0], device=device)
            logits, _ = self.runner.forward(unseen, positions)
            self.runner.commit(unseen.shape[0])
            if sample:
                q = warp_logits(logits[-1], context.params)
                token = torch.tensor([context.rng.categorical(q)], device=device)
                draws.append(q)
            else:
                token = logits[-1].argmax().view(1)
            drafted.append(token)
            unseen = token
        # the cache now holds every committed token and all draft tokens but the last
        self._drafted_in_cache = count - 1
        q = torch.nn.functional.pad(torch.stack(draws), (0, self.pad_q)) if sample else None
        self._last_draft = Draft.chain(torch.cat(drafted), q)
        return self._last_draft

    def observe(self, outcome: StepOutcome) -> None:
        if self._last_draft is None:
            return  # we proposed nothing since the last outcome: the cache holds committed tokens only
        draft, self._last_draft = self._last_draft, None
        if not outcome.draft.derives_from(draft):
            # another drafter's draft was verified (inside a composite): drop our draft tokens;
            # the next proposal feeds whatever the cache has not seen
            self.runner.rollback(self._proposed_from)
            return
        kept = min(len(outcome.path), self._drafted_in_cache)
        self.runner.rollback(self._proposed_from + kept)
