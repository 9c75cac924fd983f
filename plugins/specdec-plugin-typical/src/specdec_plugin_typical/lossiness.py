"""How lossy is typical acceptance, and what does it buy? Numbers to decide with.

Two measurements, both against the lossless `rejection` policy on the same drafts:

- `exact_comparison`: on random target/draft logits (small vocabularies), the exact output
  distribution of one speculative step followed by plain sampling (every random choice
  enumerated by `specdec.testing`), its total variation distance (TV) from plain sampling, and
  the exact expected number of accepted draft tokens per step;
- `FirstTokenTV` + `measure_pipeline`: on a real model, mean accepted tokens per step with each
  policy, and the mean per-step TV between the distribution of the step's first new token under
  typical acceptance and under plain sampling. That token is the first draft token when typical
  accepts it (then TV = 1 - P(x)) and a sample of P otherwise (TV = 0), so the number is exact
  per step and a lower bound on the TV of everything the step emits.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from specdec import (Acceptance, Draft, RandomSource, RejectionSampling, SamplingParams, mean_accepted_tokens,
                     warp_logits)
from specdec.testing import enumerate_outcomes, exact_target_distribution, sample_tree

from specdec_plugin_typical.policy import DELTA, EPSILON, TypicalAcceptance

LogitsFn = Callable[[tuple[int, ...]], torch.Tensor]


def total_variation(left: dict, right: dict) -> float:
    """TV distance between two distributions given as {outcome: probability}."""
    return 0.5 * sum(abs(left.get(key, 0.0) - right.get(key, 0.0)) for key in set(left) | set(right))


def random_logits_table(vocab_size: int, scale: float, seed: int, *, base: LogitsFn | None = None,
                        noise: float = 0.0) -> LogitsFn:
    """Logits as a function of the path: `scale * N(0, 1)` per entry (larger scale = more peaked
    distributions), or, with `base`, the base table's logits plus `noise * scale * N(0, 1)` (a
    draft model that agrees with the target more or less)."""
    generator = torch.Generator().manual_seed(seed)
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def logits(path: tuple[int, ...]) -> torch.Tensor:
        if path not in cache:
            values = torch.randn(vocab_size, generator=generator) * scale
            cache[path] = values if base is None else base(path) + noise * values
        return cache[path]

    return logits


@dataclass
class ExactComparison:
    tv: float  # TV(typical output, plain sampling) over the first num_tokens tokens
    tv_rejection: float  # the same for rejection sampling (0 up to rounding: a sanity check)
    accepted_typical: float  # expected accepted draft tokens per step
    accepted_rejection: float


def exact_comparison(params: SamplingParams, target: LogitsFn, make_draft: Callable[[RandomSource], Draft], *,
                     policy: TypicalAcceptance | None = None, num_tokens: int = 2) -> ExactComparison:
    """Exact TV and expected accepted draft tokens of typical vs rejection for one step."""
    policy = policy or TypicalAcceptance()
    plain = exact_target_distribution(params, target, num_tokens)
    results = {}
    for name, candidate in (("typical", policy), ("rejection", RejectionSampling())):
        def run(rng: RandomSource, candidate=candidate):
            draft = make_draft(rng)
            rows = [target(())] + [target(tuple(draft.tokens[draft.path_to(node)].tolist()))
                                   for node in range(draft.num_nodes)]
            acceptance = candidate.accept(torch.stack(rows), draft, params, rng)
            tokens = tuple(draft.tokens[list(acceptance.path)].tolist()) + (acceptance.next_token,)
            while len(tokens) < num_tokens:
                tokens += (_plain_token(target(tokens), params, rng),)
            return tokens[:num_tokens], len(acceptance.path)

        joint = enumerate_outcomes(run)
        outputs: dict = {}
        accepted = 0.0
        for (tokens, length), probability in joint.items():
            outputs[tokens] = outputs.get(tokens, 0.0) + probability
            accepted += probability * length
        results[name] = (total_variation(outputs, plain), accepted)
    return ExactComparison(results["typical"][0], results["rejection"][0], results["typical"][1],
                           results["rejection"][1])


def _plain_token(logits: torch.Tensor, params: SamplingParams, rng: RandomSource) -> int:
    if params.greedy:
        return int(logits.argmax())
    return rng.categorical(warp_logits(logits, params))


#: The grid `specdec typical measure` reports: (label, draft tree widths, draft mode).
SHAPES = (("argmax chain of 2", (1, 1), "top"), ("top-3 tree, then argmax", (3, 1), "top"),
          ("1 sampled token (with q)", (1,), "iid"))


def exact_table(*, temperatures: Sequence[float] = (0.0, 0.3, 0.7, 1.0), scales: Sequence[float] = (2.0, 4.0),
                noise: float = 0.5, vocab_size: int = 8, seeds: Sequence[int] = (0, 1, 2),
                epsilon: float = EPSILON, delta: float = DELTA) -> list[dict]:
    """Averages of `exact_comparison` over seeds, per temperature, logit scale and draft shape."""
    policy = TypicalAcceptance(epsilon, delta)
    rows = []
    for scale in scales:
        for temperature in temperatures:
            params = SamplingParams(temperature=temperature)
            for label, widths, mode in SHAPES:
                found = []
                for seed in seeds:
                    target = random_logits_table(vocab_size, scale, 1000 + seed)
                    drafter = random_logits_table(vocab_size, scale, 2000 + seed, base=target, noise=noise)
                    found.append(exact_comparison(
                        params, target, lambda rng: sample_tree(rng, params, drafter, widths, mode), policy=policy))
                rows.append({
                    "logit_scale": scale, "temperature": temperature, "draft": label,
                    "tv": statistics.fmean(item.tv for item in found),
                    "tv_rejection": statistics.fmean(item.tv_rejection for item in found),
                    "accepted_typical": statistics.fmean(item.accepted_typical for item in found),
                    "accepted_rejection": statistics.fmean(item.accepted_rejection for item in found),
                })
    return rows


class FirstTokenTV:
    """Wraps a policy and records, per step, the exact TV between the distribution of the step's
    first new token under the wrapped policy's rule and under plain sampling (see module doc).

    Only meaningful for typical acceptance (whose only random choice is the final token)."""

    def __init__(self, policy: TypicalAcceptance):
        self.policy = policy
        self.lossless = policy.lossless
        self.per_step: list[float] = []

    def accept(self, logits: torch.Tensor, draft: Draft, params: SamplingParams, rng: RandomSource) -> Acceptance:
        acceptance = self.policy.accept(logits, draft, params, rng)
        if not params.greedy:
            if acceptance.path:
                first = int(draft.tokens[acceptance.path[0]])
                self.per_step.append(1.0 - float(warp_logits(logits[0], params)[first]))
            else:
                self.per_step.append(0.0)
        return acceptance


def measure_pipeline(pipeline, prompts: Sequence, *, temperature: float, max_new_tokens: int = 128,
                     seed: int = 0, policy: TypicalAcceptance | None = None) -> dict:
    """Generate every prompt with the pipeline's drafter under rejection and under typical
    acceptance; report mean accepted tokens per step for both and typical's first-token TV."""
    from specdec import SpeculativeDecoder

    policy = policy or TypicalAcceptance()
    recorder = FirstTokenTV(policy)
    report = {}
    for name, candidate in (("rejection", RejectionSampling()), ("typical", recorder)):
        decoder = SpeculativeDecoder(pipeline.verifier, pipeline.drafter, candidate)
        steps = tokens = 0
        for index, prompt in enumerate(prompts):
            params = pipeline.params(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + index)
            result = decoder.generate(pipeline.encode(prompt), params)
            steps += result.stats.steps
            tokens += result.stats.new_tokens
        report[f"mean_accepted_{name}"] = mean_accepted_tokens(tokens, steps)
    report["first_token_tv"] = statistics.fmean(recorder.per_step) if recorder.per_step else 0.0
    report["steps_measured"] = len(recorder.per_step)
    return report
