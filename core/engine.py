"""`SpeculativeDecoder`: speculative generation for one sequence at a time, on the step scheduler.

The step loop lives in `specdec.scheduler`; this is the scheduler with a single drafter, so it
verifies one sequence per step. Plain autoregressive decoding is the same loop with the `none`
drafter (every draft empty), which makes it the reference every test and benchmark compares
against.

Concurrency: a decoder owns one drafter and one KV cache slot. Generations started while another
is unfinished (from another thread, or a second stream in the same thread) queue behind it: each
waits for a free slot, and whoever iterates drives the steps of the one running. To decode
several sequences at once, give a `StepScheduler` several drafters (`Pipeline.generate_batch`).
"""

from __future__ import annotations

from typing import Callable, Sequence

from specdec.protocols import AcceptancePolicy, Drafter, Verifier
from specdec.sampling import SamplingParams
from specdec.scheduler import Generation, GenerationResult, StepScheduler, TokenView

__all__ = ["Generation", "GenerationResult", "SpeculativeDecoder", "TokenView"]


class SpeculativeDecoder:
    """Runs speculative generation for one sequence at a time.

    :param verifier: runs the target model and owns its cache.
    :param drafter: proposes drafts (the `none` drafter gives plain decoding).
    :param policy: accepts or rejects draft tokens.
    :param decode: token ids -> text, needed only for `stop_strings`.
    """

    def __init__(self, verifier: Verifier, drafter: Drafter, policy: AcceptancePolicy,
                 decode: Callable[[Sequence[int]], str] | None = None, *,
                 scheduler: StepScheduler | None = None):
        """:param scheduler: run on this scheduler (it shares the verifier) instead of a private one."""
        self.verifier = verifier
        self.drafter = drafter
        self.policy = policy
        self.decode = decode
        self.scheduler = scheduler or StepScheduler(verifier, policy, [drafter], max_batch_size=1, decode=decode)

    def generate(self, prompt: Sequence[int], params: SamplingParams | None = None,
                 **overrides) -> GenerationResult:
        """Generate to completion and return the tokens with the run's statistics."""
        generation = self.stream(prompt, params, **overrides)
        for _ in generation.chunks():
            pass
        assert generation.result is not None
        return generation.result

    def stream(self, prompt: Sequence[int], params: SamplingParams | None = None, *,
               max_draft_tokens: int | None = None, **overrides) -> Generation:
        """Start a generation; iterate the result for tokens as they are committed.

        Bad input raises `InputError` here. `max_draft_tokens` caps this request's drafts (0 =
        plain decoding).
        """
        params = params or SamplingParams()
        if overrides:
            params = params.replace(**overrides)
        handle = self.scheduler.submit(prompt, params, max_draft_tokens=max_draft_tokens)
        return self.scheduler.stream(handle)
