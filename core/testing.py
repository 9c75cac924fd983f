"""The losslessness harness: checks every drafter and acceptance policy must pass.

A plugin author proves a new component lossless with one call:

    from specdec.testing import assert_lossless
    assert_lossless(lambda target: MyDrafter(...))               # a new drafter
    assert_lossless(draft_model_factory(), policy=MyPolicy())    # a new acceptance policy

which runs, on seeded tiny random Llama models:

1. greedy identity: speculative greedy output equals the engine's plain decoding and
   `model.generate(do_sample=False)` token for token, over several prompts and lengths;
2. cache exactness: after every step, the target cache (and any draft-model cache the drafter
   holds) equals a fresh forward over the committed tokens; and greedy identity inside batches
   of the step scheduler (one drafter instance per sequence);
3. sampling distribution: the empirical joint distribution of the first generated tokens
   matches the exact distribution of plain sampling (chi-square goodness of fit) at several
   temperatures and under top-k and top-p.

For acceptance policies there is also an exact check (`exact_step_distribution`): every random
choice of drafting and acceptance goes through a `RandomSource`, so `enumerate_outcomes` can
replace it with an enumerator and compute the output distribution analytically.
"""

from __future__ import annotations

import copy
import math
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from specdec.acceptance import RejectionSampling, argmax_walk
from specdec.cost import CostModel
from specdec.draft import Draft
from specdec.engine import SpeculativeDecoder
from specdec.scheduler import StepScheduler, TokenView
from specdec.model_runner import CausalLMRunner, cache_argument
from specdec.protocols import AcceptancePolicy, BaseDrafter, DraftContext, Drafter, StepOutcome
from specdec.sampling import RandomSource, SamplingParams, warp_logits
from specdec.stats import GenerationStats

#: ``make_drafter(target)``, or ``make_drafter(target, verifier)`` for a drafter that shares the
#: verifier's KV cache (self-drafting); see `build_drafter`.
DrafterFactory = Callable[..., Drafter]


def build_drafter(make_drafter: DrafterFactory, target: torch.nn.Module, verifier) -> Drafter:
    """Call a drafter factory the way the harness does: with the verifier that will verify its
    drafts when the factory has a parameter named `verifier` (a self-drafting drafter shares
    that verifier's cache, as `BuildContext.verifier` gives it in a pipeline), else with the
    target alone. Arguments by name, as pluggy passes hook arguments: old factories keep working."""
    import inspect

    try:
        parameters = inspect.signature(make_drafter).parameters
    except (TypeError, ValueError):  # a builtin or C callable: the classic signature
        parameters = {}
    if "verifier" in parameters:
        return make_drafter(target, verifier=verifier)
    return make_drafter(target)

#: Sampling settings the distribution check covers by default.
SAMPLING_CASES = (
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.0, top_k=5),
    SamplingParams(temperature=0.8, top_p=0.8),
)

# -- tiny models ------------------------------------------------------------------------------------


def tiny_llama(seed: int = 0, *, vocab_size: int = 32, hidden_size: int = 32, num_layers: int = 2,
               num_heads: int = 4, num_kv_heads: int = 2, max_positions: int = 512,
               init_std: float = 0.2, eos_token_id: int | None = None) -> torch.nn.Module:
    """A seeded random Llama-architecture model in float32 with SDPA attention.

    `init_std` is larger than a real model's so that logits are peaked: greedy decoding then
    rarely meets near-ties, which fp rounding could flip between a tree and a sequential pass.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions, initializer_range=init_std,
        bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=None,
        tie_word_embeddings=False, attn_implementation="sdpa")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = eos_token_id if eos_token_id is not None else 0
    return model.eval()


_TINY_ALPHABET = "abcdefghijklmnopqrstuvwxyz .,?!\n"
_TINY_SPECIALS = ("<unk>", "<|im_start|>", "<|im_end|>")
TINY_TOKENIZER_VOCAB = len(_TINY_SPECIALS) + len(_TINY_ALPHABET)


def tiny_tokenizer():
    """A character-level fast tokenizer (`TINY_TOKENIZER_VOCAB` ids) with a ChatML chat template,
    to test text prompts, chat input and pipelines with tiny models and no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(list(_TINY_SPECIALS) + list(_TINY_ALPHABET))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


def save_tiny_model(directory, seed: int = 0, **kwargs) -> str:
    """Save a `tiny_llama` (vocabulary matching `tiny_tokenizer`, EOS = <|im_end|>) and the
    tokenizer to `directory`, so that pipelines can load it by path like any local model."""
    tokenizer = tiny_tokenizer()
    kwargs.setdefault("vocab_size", TINY_TOKENIZER_VOCAB)
    model = tiny_llama(seed, eos_token_id=tokenizer.eos_token_id, **kwargs)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def sample_sequences(model, *, count: int = 48, length: int = 40, temperature: float = 0.8,
                     seed: int = 0) -> list:
    """`count` `TokenSequence`s sampled from `model` after short random prompts; continuations are
    learned. Training text for tiny trained drafters: a drafter trained on its target's own samples
    gets drafts accepted, so tests exercise accepted paths, not only rejections."""
    from specdec.drafters.none import NoDrafter
    from specdec.training_data import TokenSequence
    from specdec.verifiers.hf import HFVerifier

    vocab = model.get_output_embeddings().weight.shape[0]
    decoder = SpeculativeDecoder(HFVerifier(model, eos_token_ids=()), NoDrafter(), RejectionSampling())
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for index in range(count):
        prompt_length = int(torch.randint(1, 5, (1,), generator=generator))
        prompt = torch.randint(vocab, (prompt_length,), generator=generator).tolist()
        params = SamplingParams(temperature=temperature, max_new_tokens=length, seed=seed * 10_007 + index)
        tokens = decoder.generate(prompt, params).tokens
        sequences.append(TokenSequence(tuple(prompt + tokens), ((len(prompt), len(prompt) + len(tokens)),)))
    return sequences


def perturbed_copy(model: torch.nn.Module, scale: float, seed: int = 1) -> torch.nn.Module:
    """A copy of `model` with Gaussian noise (`scale` times each tensor's std) on every weight:
    a draft model that agrees with the target often, but not always."""
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in twin.parameters():
            spread = parameter.std() if parameter.numel() > 1 else parameter.abs().mean()
            noise = torch.randn(parameter.shape, generator=generator) * float(spread) * scale
            parameter.add_(noise.to(parameter.dtype))
    return twin.eval()


# -- exact enumeration of random choices ------------------------------------------------------------


class _Replay:
    """A RandomSource that follows a prescribed list of choices and records new decision points."""

    def __init__(self, prefix: list[int]):
        self.prefix = prefix
        self.choices: list[int] = []
        self.options: list[list[tuple[int, float]]] = []
        self.probability = 1.0

    def _decide(self, options: list[tuple[int, float]]) -> int:
        index = len(self.choices)
        choice = self.prefix[index] if index < len(self.prefix) else 0
        self.choices.append(choice)
        self.options.append(options)
        value, weight = options[choice]
        self.probability *= weight
        return value

    def bernoulli(self, probs: torch.Tensor) -> list[bool]:
        flips = []
        for chance in probs.reshape(-1).tolist():
            chance = min(max(chance, 0.0), 1.0)
            options = [(value, weight) for value, weight in ((1, chance), (0, 1.0 - chance)) if weight > 0]
            flips.append(bool(self._decide(options)))
        return flips

    def categorical(self, probs: torch.Tensor) -> int:
        weights = probs.reshape(-1).double()
        total = float(weights.sum())
        options = [(index, float(weight) / total) for index, weight in enumerate(weights.tolist()) if weight > 0]
        return self._decide(options)


def enumerate_outcomes(run: Callable[[RandomSource], Hashable]) -> dict[Hashable, float]:
    """Exact distribution of `run(rng)` over every sequence of random choices it can make.

    `run` must make its random choices only through `rng` (as drafters and policies do) and be
    deterministic otherwise. Cost grows with the number of distinct choice sequences.
    """
    distribution: dict[Hashable, float] = {}
    pending: list[list[int]] = [[]]
    while pending:
        prefix = pending.pop()
        rng = _Replay(prefix)
        result = run(rng)
        distribution[result] = distribution.get(result, 0.0) + rng.probability
        for index in range(len(prefix), len(rng.choices)):
            for alternative in range(1, len(rng.options[index])):
                pending.append(rng.choices[:index] + [alternative])
    return distribution


# -- exact policy checks ----------------------------------------------------------------------------

LogitsFn = Callable[[tuple[int, ...]], torch.Tensor]  # token path after the root -> logits [V]


def exact_target_distribution(params: SamplingParams, target_logits: LogitsFn,
                              num_tokens: int) -> dict[tuple[int, ...], float]:
    """The distribution of the first `num_tokens` tokens of plain sampling (or greedy decoding)."""

    def run(rng: RandomSource) -> tuple[int, ...]:
        tokens: tuple[int, ...] = ()
        while len(tokens) < num_tokens:
            tokens += (_plain_token(target_logits(tokens), params, rng),)
        return tokens

    return enumerate_outcomes(run)


def exact_step_distribution(policy: AcceptancePolicy, params: SamplingParams, target_logits: LogitsFn,
                            make_draft: Callable[[RandomSource], Draft],
                            num_tokens: int) -> dict[tuple[int, ...], float]:
    """The exact distribution of the first `num_tokens` tokens when one speculative step (draft
    from `make_draft`, verified by `policy`) is followed by plain sampling if it emitted fewer."""

    def run(rng: RandomSource) -> tuple[int, ...]:
        draft = make_draft(rng)
        rows = [target_logits(())] + [target_logits(tuple(draft.tokens[draft.path_to(node)].tolist()))
                                      for node in range(draft.num_nodes)]
        acceptance = policy.accept(torch.stack(rows), draft, params, rng)
        tokens = tuple(draft.tokens[list(acceptance.path)].tolist()) + (acceptance.next_token,)
        while len(tokens) < num_tokens:
            tokens += (_plain_token(target_logits(tokens), params, rng),)
        return tokens[:num_tokens]

    return enumerate_outcomes(run)


def sample_tree(rng: RandomSource, params: SamplingParams, draft_logits: LogitsFn,
                widths: Sequence[int], mode: str) -> Draft:
    """A draft tree whose node at depth d has `widths[d]` children, each drawn from the draft
    distribution q = warp(draft_logits(path)) in one of three ways:

    - "iid": children drawn independently from q (q row = q);
    - "without_replacement": drawn one after another, each from q with earlier siblings removed
      (the row reports that renormalized distribution);
    - "top": the most likely tokens, deterministic (the draft carries no q).
    """
    if mode not in ("iid", "without_replacement", "top"):
        raise ValueError(f"unknown mode {mode!r}")
    tokens: list[int] = []
    parents: list[int] = []
    rows: list[torch.Tensor] = []
    frontier: list[tuple[int, tuple[int, ...]]] = [(-1, ())]
    for width in widths:
        next_frontier = []
        for parent, path in frontier:
            logits = draft_logits(path)
            if mode == "top" or params.greedy:
                children = logits.topk(min(width, logits.shape[-1])).indices.tolist()
                distribution = None
            else:
                distribution = warp_logits(logits, params)
                children = []
            for _ in range(width if distribution is not None else 0):
                if float(distribution.sum()) <= 0:
                    break
                token = rng.categorical(distribution)
                children.append(token)
                rows.append(distribution)
                if mode == "without_replacement":
                    distribution = distribution.clone()
                    distribution[token] = 0.0
                    total = distribution.sum()
                    distribution = distribution / total if total > 0 else distribution
            for token in children:
                tokens.append(token)
                parents.append(parent)
                next_frontier.append((len(tokens) - 1, path + (token,)))
        frontier = next_frontier
    q = torch.stack(rows) if rows and mode != "top" and not params.greedy else None
    return Draft(torch.tensor(tokens, dtype=torch.long), tuple(parents), q)


def check_policy_exact(policy: AcceptancePolicy, *, vocab_size: int = 5, seeds: Sequence[int] = (0, 1, 2),
                       params_cases: Sequence[SamplingParams] = SAMPLING_CASES,
                       shapes: Sequence[tuple[tuple[int, ...], str]] = (
                           ((1,), "iid"), ((2,), "iid"), ((1, 1), "iid"), ((2, 1), "iid"),
                           ((3,), "without_replacement"), ((2, 1), "without_replacement"),
                           ((2,), "top"), ((2, 1), "top")),
                       tolerance: float = 1e-6) -> None:
    """Assert that one speculative step of `policy` leaves the distribution of every token it can
    emit (accepted path plus bonus) exactly that of plain sampling, for random target and draft logits (zeros and
    disjoint supports included) and several tree shapes. Raises AssertionError otherwise."""
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        target_table = _random_logits_table(vocab_size, generator)
        draft_table = _random_logits_table(vocab_size, generator)
        for params in params_cases:
            for widths, mode in shapes:
                num_tokens = len(widths) + 1  # a fully accepted path plus its bonus token
                expected = exact_target_distribution(params, target_table, num_tokens)
                actual = exact_step_distribution(
                    policy, params, target_table,
                    lambda rng: sample_tree(rng, params, draft_table, widths, mode), num_tokens)
                gap = max_abs_difference(expected, actual)
                if gap > tolerance:
                    raise AssertionError(
                        f"{type(policy).__name__} is not lossless: seed {seed}, {params}, tree "
                        f"widths {widths} ({mode}): output distribution differs from plain sampling "
                        f"by {gap:.3g} (tolerance {tolerance})")


def max_abs_difference(left: dict, right: dict) -> float:
    return max((abs(left.get(key, 0.0) - right.get(key, 0.0)) for key in set(left) | set(right)), default=0.0)


def _random_logits_table(vocab_size: int, generator: torch.Generator) -> LogitsFn:
    """Logits as a function of the path: random scales, with some tokens impossible (-inf)."""
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def logits(path: tuple[int, ...]) -> torch.Tensor:
        if path not in cache:
            values = torch.randn(vocab_size, generator=generator) * 3.0
            blocked = torch.rand(vocab_size, generator=generator) < 0.3
            blocked[int(values.argmax())] = False
            cache[path] = values.masked_fill(blocked, float("-inf"))
        return cache[path]

    return logits


def _plain_token(logits: torch.Tensor, params: SamplingParams, rng: RandomSource) -> int:
    if params.greedy:
        return int(logits.argmax())
    return rng.categorical(warp_logits(logits, params))


# -- engine-level checks ----------------------------------------------------------------------------


@dataclass
class ChiSquareResult:
    statistic: float
    degrees_of_freedom: int
    p_value: float
    num_samples: int


def chi_square(observed: Counter, expected: dict, num_samples: int, min_expected: float = 5.0) -> ChiSquareResult:
    """Pearson goodness of fit; cells expected fewer than `min_expected` times are pooled. An
    observed outcome that has probability 0 under `expected` fails outright (p-value 0)."""
    if any(expected.get(key, 0.0) <= 0.0 for key in observed):
        return ChiSquareResult(math.inf, 1, 0.0, num_samples)
    statistic, cells = 0.0, 0
    pooled_expected, pooled_observed = 0.0, 0
    for key in set(expected) | set(observed):
        count = num_samples * expected.get(key, 0.0)
        if count < min_expected:
            pooled_expected += count
            pooled_observed += observed.get(key, 0)
            continue
        statistic += (observed.get(key, 0) - count) ** 2 / count
        cells += 1
    if pooled_expected > 0:
        statistic += (pooled_observed - pooled_expected) ** 2 / pooled_expected
        cells += 1
    dof = max(cells - 1, 1)
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                            torch.tensor(statistic / 2, dtype=torch.float64)))
    return ChiSquareResult(statistic, dof, p_value, num_samples)


def marginal(distribution: dict[tuple[int, ...], float], positions: Sequence[int]) -> dict[tuple[int, ...], float]:
    """The distribution of the tokens at `positions` of a joint distribution over sequences."""
    result: dict[tuple[int, ...], float] = {}
    for sequence, probability in distribution.items():
        key = tuple(sequence[position] for position in positions)
        result[key] = result.get(key, 0.0) + probability
    return result


#: Most prefixes `exact_model_distribution` expands at one position (one batched forward each).
MAX_EXACT_PREFIXES = 50_000


def exact_model_distribution(model: torch.nn.Module, prompt: Sequence[int], params: SamplingParams,
                             num_tokens: int) -> dict[tuple[int, ...], float]:
    """The exact joint distribution of the first `num_tokens` tokens of plain sampling (or greedy
    decoding) from `model`, expanding every prefix with positive probability, one batched
    forward per position.

    The number of prefixes grows as the vocabulary to the power of the position (under top-k or
    top-p, as the kept tokens); above `MAX_EXACT_PREFIXES` it raises instead of exhausting memory.
    """
    distribution: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(num_tokens):
        prefixes = list(distribution)
        if len(prefixes) > MAX_EXACT_PREFIXES:
            raise ValueError(
                f"the exact distribution of {num_tokens} tokens needs {len(prefixes)} prefixes at position "
                f"{len(prefixes[0]) + 1} (more than {MAX_EXACT_PREFIXES}): use fewer tokens, a smaller "
                f"vocabulary, or top_k")
        with torch.inference_mode():
            ids = torch.tensor([list(prompt) + list(prefix) for prefix in prefixes], device=model.device)
            logits = model(ids).logits[:, -1].float()
        if params.greedy:
            probs = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double()
        else:
            probs = warp_logits(logits, params).double()
        probs = probs.cpu()
        expanded: dict[tuple[int, ...], float] = {}
        for row, prefix in enumerate(prefixes):
            for token in probs[row].nonzero().flatten().tolist():
                expanded[prefix + (token,)] = distribution[prefix] * float(probs[row, token])
        distribution = expanded
    return distribution


def check_sampling_distribution(make_drafter: DrafterFactory, target: torch.nn.Module,
                                params: SamplingParams, *, policy: AcceptancePolicy | None = None,
                                prompt: Sequence[int] = (1, 2, 3), max_new_tokens: int = 4,
                                num_samples: int = 1500, alpha: float = 1e-3,
                                seed: int = 0, companions: int = 0) -> dict[str, ChiSquareResult]:
    """Sample `num_samples` speculative generations of `max_new_tokens` tokens and test them
    against plain sampling's exact distribution: the joint distribution of the first two tokens,
    and the marginal distribution of every later position (so errors in deep draft positions
    show), each by a chi-square goodness-of-fit test.

    With `companions > 0` every sample is decoded by the step scheduler inside a batch with that
    many other requests (other prompts, lengths and temperatures, each with its own drafter):
    a sequence's distribution must not depend on the company it keeps.

    `alpha` is the false-alarm rate of the whole check for a correct implementation (split
    evenly between the tests, Bonferroni); seeds are fixed, so the outcome is reproducible.
    Returns the result of each test by name.
    """
    from specdec.verifiers.hf import HFVerifier

    verifier = HFVerifier(target, eos_token_ids=())
    decoder = SpeculativeDecoder(verifier, build_drafter(make_drafter, target, verifier),
                                 policy or RejectionSampling())
    batch = None
    if companions:
        batch_verifier = HFVerifier(target, eos_token_ids=())
        batch = StepScheduler(batch_verifier, decoder.policy,
                              drafter_factory=lambda: build_drafter(make_drafter, target, batch_verifier),
                              max_batch_size=companions + 1)
    vocab = int(target.config.vocab_size)
    samples = []
    for index in range(num_samples):
        sample = params.replace(seed=seed * 1_000_003 + index, max_new_tokens=max_new_tokens)
        if batch is None:
            samples.append(tuple(decoder.generate(prompt, sample).tokens))
            continue
        handle = batch.submit(prompt, sample)
        for other in range(companions):  # submitted after the sample: it takes slot 0 or moves
            batch.submit([(index + other + token) % vocab for token in range(1 + (index + other) % 5)],
                         SamplingParams(temperature=0.5 + other, seed=index, max_new_tokens=1 + (index + other) % 7))
        batch.run()
        if handle.error is not None:
            raise handle.error
        samples.append(tuple(handle.result.tokens))
    exact = exact_model_distribution(target, prompt, params, max_new_tokens)
    groups = {"tokens 1-2": (0, 1)} if max_new_tokens >= 2 else {"token 1": (0,)}
    groups.update({f"token {position + 1}": (position,) for position in range(2, max_new_tokens)})
    results = {}
    for name, positions in groups.items():
        observed = Counter(tuple(sample[position] for position in positions) for sample in samples)
        result = results[name] = chi_square(observed, marginal(exact, positions), num_samples)
        if result.p_value < alpha / len(groups):
            raise AssertionError(
                f"speculative sampling with {type(decoder.drafter).__name__} and "
                f"{type(decoder.policy).__name__} does not match plain sampling at {params} ({name}): "
                f"chi-square {result.statistic:.1f} on {result.degrees_of_freedom} dof, "
                f"p = {result.p_value:.2e} < {alpha / len(groups):.1e} over {num_samples} samples")
    return results


class _CacheChecker(BaseDrafter):
    """Wraps a drafter; after each step checks target and draft caches against fresh forwards."""

    def __init__(self, inner: Drafter, verifier, target: torch.nn.Module, tolerance: float):
        self.inner, self.verifier, self.target, self.tolerance = inner, verifier, target, tolerance
        self.hidden_state_layers = inner.hidden_state_layers
        self.wants_logits = getattr(inner, "wants_logits", False)
        self.checked_steps = 0

    def start(self, prompt, params):
        self.inner.start(prompt, params)

    def propose(self, context: DraftContext) -> Draft:
        return self.inner.propose(context)

    def observe(self, outcome: StepOutcome) -> None:
        self.inner.observe(outcome)
        tokens = list(outcome.tokens)
        # the target cache holds every committed token but the newest (the next root)
        assert_cache_matches(self.verifier.runner, self.target, tokens[:-1], self.tolerance, "target")
        for name, runner in _runners(self.inner, "drafter"):
            assert_cache_matches(runner, runner.model, tokens[: runner.length], self.tolerance, name)
        self.checked_steps += 1


def _runners(value, name: str, seen: set | None = None):
    """Every `CausalLMRunner` reachable from a drafter (through attributes, lists, sub-drafters)."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, (str, bytes, int, float, torch.Tensor, torch.nn.Module)):
        return
    seen.add(id(value))
    if isinstance(value, CausalLMRunner):
        yield name, value
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _runners(item, f"{name}[{index}]", seen)
    elif hasattr(value, "__dict__"):
        for attribute, item in vars(value).items():
            yield from _runners(item, f"{name}.{attribute}", seen)


def assert_cache_matches(runner: CausalLMRunner, model: torch.nn.Module, tokens: Sequence[int],
                         tolerance: float, label: str) -> None:
    """The runner's committed cache equals a fresh forward of `model` over `tokens`."""
    if runner.length != len(tokens):
        raise AssertionError(f"{label} cache holds {runner.length} entries, expected {len(tokens)}")
    if not tokens:
        return
    from transformers import DynamicCache

    with torch.inference_mode():
        fresh = DynamicCache(config=model.config)
        model(torch.tensor([list(tokens)], device=model.device), use_cache=True, **{cache_argument(model): fresh})
    for layer in range(runner.num_layers):
        keys, values = runner.cache.keys_values(layer)
        gap = max(float((keys - fresh.layers[layer].keys).abs().max()),
                  float((values - fresh.layers[layer].values).abs().max()))
        if gap > tolerance:
            raise AssertionError(f"{label} cache layer {layer} differs from a fresh forward by {gap:.3g}")


def check_greedy_identity(make_drafter: DrafterFactory, target: torch.nn.Module,
                          prompts: Sequence[Sequence[int]], *, policy: AcceptancePolicy | None = None,
                          max_new_tokens: int = 24, check_caches: bool = True,
                          tolerance: float = 1e-4) -> list[list[int]]:
    """Greedy speculative output must equal plain decoding and `model.generate` token for token.

    Also checks, after every step, that the caches equal a fresh forward (when `check_caches`).
    Returns the outputs.
    """
    from specdec.drafters.none import NoDrafter
    from specdec.verifiers.hf import HFVerifier

    eos = HFVerifier(target).eos_token_ids
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    plain = SpeculativeDecoder(HFVerifier(target, eos), NoDrafter(), RejectionSampling())
    verifier = HFVerifier(target, eos)
    drafter = build_drafter(make_drafter, target, verifier)
    if check_caches:
        drafter = _CacheChecker(drafter, verifier, target, tolerance)
    speculative = SpeculativeDecoder(verifier, drafter, policy or RejectionSampling())
    outputs = []
    for prompt in prompts:
        reference = plain.generate(prompt, params).tokens
        with torch.inference_mode():
            ids = torch.tensor([list(prompt)], device=target.device)
            generated = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=max_new_tokens, eos_token_id=list(eos) or None,
                                        pad_token_id=eos[0] if eos else 0)[0, len(prompt):].tolist()
        if reference != generated:
            raise AssertionError(f"plain decoding differs from model.generate for prompt {list(prompt)}:"
                                 f"\n  specdec {reference}\n  HF      {generated}")
        result = speculative.generate(prompt, params).tokens
        if result != reference:
            first = next((i for i, (a, b) in enumerate(zip(result, reference)) if a != b),
                         min(len(result), len(reference)))
            raise AssertionError(
                f"speculative greedy output differs from plain decoding at token {first} for prompt "
                f"{list(prompt)}:\n  speculative {result}\n  plain       {reference}")
        outputs.append(result)
    return outputs


def check_batched_greedy_identity(make_drafter: DrafterFactory, target: torch.nn.Module,
                                  prompts: Sequence[Sequence[int]], *, policy: AcceptancePolicy | None = None,
                                  max_new_tokens: int = 24, batch_sizes: Sequence[int] = (2, 4)) -> None:
    """Greedy output of every prompt decoded inside a batch (the step scheduler, one drafter
    instance per sequence, requests of different lengths joining as others finish) must equal
    plain batch-1 decoding token for token.

    Batched forwards round differently from single ones, as tree verification does: like
    `check_greedy_identity`, this relies on a target with peaked logits (`tiny_llama`'s), where
    no near-tie flips an argmax; a float64 target (`.double()`) removes even that doubt when the
    drafter's own weights can follow.
    """
    from specdec.drafters.none import NoDrafter
    from specdec.verifiers.hf import HFVerifier

    eos = HFVerifier(target).eos_token_ids
    plain = SpeculativeDecoder(HFVerifier(target, eos), NoDrafter(), RejectionSampling())
    lengths = [max(1, max_new_tokens - 3 * index) for index in range(len(prompts))]
    references = [plain.generate(prompt, SamplingParams(max_new_tokens=length)).tokens
                  for prompt, length in zip(prompts, lengths)]
    for batch_size in batch_sizes:
        verifier = HFVerifier(target, eos)
        scheduler = StepScheduler(verifier, policy or RejectionSampling(),
                                  drafter_factory=lambda: build_drafter(make_drafter, target, verifier),
                                  max_batch_size=batch_size)
        handles = [scheduler.submit(prompt, SamplingParams(max_new_tokens=length))
                   for prompt, length in zip(prompts, lengths)]
        scheduler.run()
        for prompt, handle, reference in zip(prompts, handles, references):
            if handle.error is not None:
                raise AssertionError(f"prompt {list(prompt)} failed at batch size {batch_size}: {handle.error}")
            if handle.result.tokens != reference:
                raise AssertionError(
                    f"greedy output at batch size {batch_size} differs from batch-1 plain decoding for prompt "
                    f"{list(prompt)}:\n  batched {handle.result.tokens}\n  plain   {reference}")


#: What `assert_lossless(..., quick=True)` runs: enough to catch most bugs while iterating (a
#: few seconds for a small drafter), not a substitute for the full check before a release.
QUICK_PROMPTS = 2
QUICK_LENGTHS = (2, 12)
QUICK_NUM_SAMPLES = 400
QUICK_SAMPLING_CASES = (SamplingParams(temperature=1.0), SamplingParams(temperature=0.8, top_p=0.8))


class _DraftCounter(BaseDrafter):
    """Wraps a drafter and counts the non-empty drafts it proposes (otherwise transparent)."""

    def __init__(self, inner: Drafter):
        self.inner = inner
        self.hidden_state_layers = inner.hidden_state_layers
        self.wants_logits = getattr(inner, "wants_logits", False)
        self.proposals = self.drafted = 0

    def start(self, prompt, params):
        self.inner.start(prompt, params)

    def propose(self, context: DraftContext) -> Draft:
        draft = self.inner.propose(context)
        self.proposals += 1
        self.drafted += draft.num_nodes > 0
        return draft

    def observe(self, outcome: StepOutcome) -> None:
        self.inner.observe(outcome)


def assert_lossless(make_drafter: DrafterFactory, *, policy: AcceptancePolicy | None = None,
                    vocab_size: int = 12, seed: int = 0, num_samples: int | None = None,
                    sampling_cases: Sequence[SamplingParams] | None = None, quick: bool = False) -> None:
    """The whole suite for a drafter (and optionally a policy) on a seeded tiny target model:
    greedy identity with cache checks on several prompts and lengths, then the sampling
    distribution at each of `sampling_cases`.

    The drafter must draft: one that proposes only empty drafts during the greedy checks fails
    (plain decoding is trivially "lossless", so it would prove nothing about the drafts).

    :param make_drafter: ``make_drafter(target) -> Drafter``, called once per check (per sequence
        in the batched checks); a factory with a `verifier` parameter also gets the verifier whose
        cache it may share (see `build_drafter`).
    :param policy: the acceptance policy under test (default: `RejectionSampling`).
    :param vocab_size: vocabulary of the tiny target models (the last id is end-of-sequence).
    :param seed: seed of the tiny target models' weights.
    :param num_samples: generations per sampling case (default 1500, quick 400); more samples
        detect smaller distribution errors.
    :param sampling_cases: the `SamplingParams` the distribution check covers (default
        `SAMPLING_CASES`: temperatures 1.0 and 0.7, top-k 5, top-p 0.8; quick: two of them).
    :param quick: a smaller preset for iterating (2 prompts, 2 lengths, fewer samples and
        cases); run the full check before you publish.
    """
    target = tiny_llama(seed, vocab_size=vocab_size, eos_token_id=vocab_size - 1)
    prompts = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(vocab_size - 1)) * 2]
    lengths = (1, 2, 7, 20)
    if quick:
        prompts, lengths = [prompts[0], prompts[3]], QUICK_LENGTHS
    if num_samples is None:
        num_samples = QUICK_NUM_SAMPLES if quick else 1500
    if sampling_cases is None:
        sampling_cases = QUICK_SAMPLING_CASES if quick else SAMPLING_CASES
    counters: list[_DraftCounter] = []

    def counted(model: torch.nn.Module, verifier=None) -> Drafter:
        counters.append(_DraftCounter(build_drafter(make_drafter, model, verifier)))
        return counters[-1]

    for max_new_tokens in lengths:
        check_greedy_identity(counted, target, prompts, policy=policy, max_new_tokens=max_new_tokens)
    proposals = sum(counter.proposals for counter in counters)
    if not any(counter.drafted for counter in counters):
        name = type(counters[0].inner).__name__ if counters else "the drafter"
        raise AssertionError(
            f"{name} proposed no draft tokens in {proposals} steps of greedy decoding, so nothing "
            f"about its drafts was checked; an empty drafter is plain decoding, not a lossless "
            f"drafter. Make it draft on these tiny models (prompts {prompts}, vocabulary {vocab_size})")
    check_batched_greedy_identity(make_drafter, target, prompts, policy=policy)
    sampling_target = tiny_llama(seed, vocab_size=vocab_size, init_std=0.1)
    for params in sampling_cases:
        check_sampling_distribution(make_drafter, sampling_target, params, policy=policy,
                                    num_samples=num_samples)


# -- greedy replay: a drafter's exact acceptance without running the target --------------------------


@dataclass
class GreedyReplay:
    """What `replay_greedy` measured: exact step statistics, and the modeled cost in plain steps."""

    stats: GenerationStats = field(default_factory=GenerationStats)
    cost: float = 0.0  # plain decoding costs 1.0 per token; a step with m draft nodes cost.step_cost(m)

    @property
    def steps(self) -> int:
        return self.stats.steps

    @property
    def drafted_steps(self) -> int:
        """Steps with a non-empty draft."""
        return self.stats.drafted_at_depth[0] if self.stats.drafted_at_depth else 0

    @property
    def mean_accepted_tokens(self) -> float:
        return self.stats.mean_accepted_tokens

    @property
    def modeled_speedup(self) -> float:
        return self.stats.new_tokens / self.cost if self.cost else 0.0

    def add(self, other: "GreedyReplay") -> None:
        self.stats, self.cost = self.stats.merge(other.stats), self.cost + other.cost

    def line(self) -> str:
        return (f"mean accepted {self.mean_accepted_tokens:.2f}, modeled speedup {self.modeled_speedup:.2f}x, "
                f"drafted {self.drafted_steps}/{self.steps} steps, "
                f"{self.stats.draft_tokens / max(self.steps, 1):.1f} nodes/step")


def replay_greedy(drafter: Drafter, prompt: Sequence[int], output: Sequence[int],
                  cost: CostModel | None = None) -> GreedyReplay:
    """Replay one greedy generation through `drafter` without running the target.

    Under greedy decoding a speculative run is fixed by the plain output: a draft node is
    accepted exactly when its path spells the output. Given `output` (the plain greedy tokens
    after `prompt`), this runs the engine's step (propose, the greedy walk, commit, observe, the
    same `StepOutcome`) and returns exact steps and accepted tokens, and a speedup modeled by
    `cost` (default `CostModel()`): timing-free, so it is reliable on a busy machine and fast
    enough to fit a drafter's parameters over a corpus. Wall-clock numbers come from `specdec bench`.
    """
    cost = cost or CostModel()
    params = SamplingParams(temperature=0.0, max_new_tokens=max(len(output), 1))
    replay = GreedyReplay()
    clock = replay.stats.clock
    tokens = list(prompt)
    with clock.drafting():
        drafter.start(prompt, params)
    step = 0
    while (done := len(tokens) - len(prompt)) < len(output):
        remaining = len(output) - done
        draft = Draft.empty()
        if remaining > 1:
            with clock.drafting():
                draft = drafter.propose(DraftContext(TokenView(tokens), len(prompt), params, remaining - 1, None, step))
            draft = draft.truncated(remaining - 1) if draft.num_nodes else draft
        # the target's argmax at each row is the output token at that row's depth
        expected = [output[done + depth] if done + depth < len(output) else -1 for depth in (0, *draft.depths)]
        acceptance = argmax_walk(expected, draft)
        tokens.extend((*draft.path_tokens(acceptance.path), acceptance.next_token))
        replay.stats.record_step(draft_tokens=draft.num_nodes, draft_depth=draft.max_depth,
                                 accepted=len(acceptance.path), new_tokens=len(acceptance.path) + 1)
        replay.cost += cost.step_cost(draft.num_nodes)
        if len(tokens) - len(prompt) < len(output):
            with clock.drafting():
                drafter.observe(StepOutcome.of(draft, acceptance, TokenView(tokens)))
        step += 1
    return replay


# -- the plugin as specdec sees it ------------------------------------------------------------------


def check_plugin(name: str, components: Sequence[tuple[str, str]] = (), *, distribution: str | None = None,
                 commands: bool = False):
    """Assert that specdec itself loads the installed plugin `name` (its entry-point name).

    An `import` of the plugin passes with a broken or missing entry point; this asks the host:
    the plugin loaded without a failure, from `distribution` when given, registered each
    `(kind, component name)` of `components`, and (with `commands`) adds CLI commands. When its
    distribution declares components in the `specdec.components` metadata, they must be exactly
    the ones it registered (the "install X" hint reads them).

    :returns: the `specdec.plugins.PluginSet`, for further checks.
    """
    from specdec.plugins import load_plugins
    from specdec.registry import COMPONENTS_GROUP

    loaded = load_plugins()
    failures = [str(failure) for failure in loaded.failures if failure.name == name]
    if failures:
        raise AssertionError("; ".join(failures))
    found = [info for info in loaded.plugins if info.name == name]
    if not found:
        raise AssertionError(f"specdec does not find the plugin '{name}': is its distribution installed, "
                             f"with an entry point named '{name}' in the group 'specdec'?")
    info = found[0]
    if distribution is not None and info.distribution != distribution:
        raise AssertionError(f"plugin '{name}' comes from {info.distribution}, not {distribution}")
    registered = {(component.kind, component.name) for kind in loaded.registry.components.values()
                  for component in kind.values() if component.plugin == name}
    missing = [f"{kind} '{component}'" for kind, component in components if (kind, component) not in registered]
    if missing:
        raise AssertionError(f"plugin '{name}' did not register {', '.join(missing)}; it registered "
                             f"{sorted(registered) or 'nothing'}")
    import importlib.metadata

    declared = {tuple(entry.name.split(".", 1)) for entry in importlib.metadata.entry_points(group=COMPONENTS_GROUP)
                if entry.dist is not None and entry.dist.name == info.distribution}
    if declared and declared != registered:
        raise AssertionError(f"{info.distribution} declares the components {sorted(declared)} in its "
                             f"'{COMPONENTS_GROUP}' metadata but registers {sorted(registered)}")
    if commands and name not in [impl.plugin_name for impl in loaded.manager.hook.register_commands.get_hookimpls()]:
        raise AssertionError(f"plugin '{name}' adds no CLI command (no register_commands hook)")
    return loaded


def config_problems(text: str, registry=None, source: str = "pipeline.yaml") -> list[str]:
    """The problems `specdec validate` reports for a pipeline file's text, one a line.

    A test of a component's params model states the messages a user sees (with the file's line
    numbers) rather than pydantic's exception; the text must not validate. It is dedented first,
    so that a test can indent it.

    :param registry: the components to validate against (default: the built-ins only).
    :param source: the file name the messages use.
    """
    from specdec.config import parse_yaml, validate_pipeline
    from specdec.errors import ConfigError
    from specdec.plugins import load_plugins

    registry = registry if registry is not None else load_plugins(entry_points=False).registry
    text = textwrap.dedent(text)
    try:
        validate_pipeline(parse_yaml(text, source), registry, source, text)
    except ConfigError as error:
        return str(error).splitlines()
    raise AssertionError(f"the pipeline validates; expected problems:\n{text}")


def damage_bytes(path, kind: str, how) -> None:
    """Damage a stored file the way a disk or an interrupted copy does, for fuzz tests of readers.

    :param kind: "truncate" (`how`: the fraction of the file kept) or "flip" (`how`: pairs of
        (position as a fraction of the length, XOR mask of the byte there)).
    """
    from pathlib import Path

    path = Path(path)
    raw = bytearray(path.read_bytes())
    if kind == "truncate":
        path.write_bytes(raw[: int(len(raw) * how)])
    elif kind == "flip":
        for where, mask in how:
            raw[min(int(len(raw) * where), len(raw) - 1)] ^= mask
        path.write_bytes(raw)
    else:
        raise ValueError(f"unknown damage {kind!r}; use 'truncate' or 'flip'")


# -- reference drafters and policies used by the tests ----------------------------------------------


class AlwaysAccept:
    """A broken acceptance policy for testing the tests: it accepts the first child at every node,
    so its output follows the draft distribution, not the target's. A losslessness check that
    passes it is too weak."""

    lossless = False

    def accept(self, logits, draft, params, rng):
        from specdec.protocols import Acceptance

        path, row = [], 0
        while draft.children[row]:
            path.append(draft.children[row][0])
            row = path[-1] + 1
        return Acceptance(tuple(path), rng.categorical(warp_logits(logits[row], params)))


class AcceptsEverythingWhenSampling(RejectionSampling):
    """A broken policy that is exact at temperature 0 (plain rejection sampling there) and accepts
    every draft when sampling: only the sampling checks can catch it, so a drafter's tests use it to
    show that their distribution check has teeth."""

    lossless = False

    def accept(self, logits, draft, params, rng):
        if params.greedy:
            return super().accept(logits, draft, params, rng)
        return AlwaysAccept().accept(logits, draft, params, rng)


class ModelTreeDrafter(BaseDrafter):
    """A tree drafter for tests: a small model proposes `widths[d]` children per node at depth d
    (see `sample_tree` for the modes). It recomputes the draft model from scratch for every node,
    which is fine for tiny models and keeps it obviously correct."""

    def __init__(self, model: torch.nn.Module, widths: Sequence[int] = (2, 2, 1), mode: str = "iid"):
        self.model, self.widths, self.mode = model, tuple(widths), mode

    @torch.inference_mode()
    def propose(self, context: DraftContext) -> Draft:
        prefix = list(context.tokens)

        def draft_logits(path: tuple[int, ...]) -> torch.Tensor:
            return self.model(torch.tensor([prefix + list(path)], device=self.model.device)).logits[0, -1].float()

        return sample_tree(context.rng, context.params, draft_logits,
                           self.widths[: context.max_depth], self.mode)
