"""`Pipeline`: a validated pipeline file turned into a ready speculative decoder.

    pipeline = Pipeline.from_yaml("pipeline.yaml")
    result = pipeline.generate([{"role": "user", "content": "Hi!"}], temperature=0.7)
    print(result.text, result.stats.summary())

    for piece in pipeline.stream("Once upon a time"):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from specdec.config import ValidatedPipeline, load_yaml, sampling_problem, validate_component, validate_pipeline
from specdec.errors import ConfigError, InputError
from specdec.params import SamplingParams
from specdec.plugins import PluginSet, default_plugins
from specdec.registry import BuildContext

logger = logging.getLogger(__name__)

Prompt = str | Sequence[dict] | Sequence[int]
_PROMPT_KINDS = ("a prompt is a string, a list of chat messages ({'role': ..., 'content': ...}) or a list "
                 "of token ids (integers >= 0)")


def check_text(text: str, what: str) -> None:
    """Refuse text holding lone surrogates: Python's stand-ins for bytes that were not valid UTF-8
    (in argv, or read with errors="surrogateescape"), which tokenizers reject with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        found = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate U+{code:04X}"
        raise InputError(f"{what} is not valid text: character {error.start} stands for {found}, which is "
                         f"not UTF-8; pass UTF-8 text") from None


@dataclass
class PipelineResult:
    text: str  # decoded generated text (special tokens skipped, cut before a stop string)
    token_ids: list[int]  # generated ids, including the stop token or the token ending a stop string
    finish_reason: str  # "stop" or "length"
    stats: Any  # specdec.stats.GenerationStats
    prompt_token_ids: list[int]


class IncrementalText:
    """The text of a generation as its tokens arrive, handed out in pieces that join to the final
    text: it holds back an incomplete multi-byte character, and text that could be the beginning
    of a stop string (the stop string itself is never shown)."""

    def __init__(self, pipeline: "Pipeline", params: SamplingParams):
        self._pipeline = pipeline
        self._params = params
        self._hold = max((len(stop) for stop in params.stop_strings), default=1) - 1
        self.tokens: list[int] = []
        self.shown = ""

    def add(self, chunk: Sequence[int]) -> str:
        """Take one step's tokens; returns the text that is now safe to show ("" if none)."""
        self.tokens.extend(chunk)
        text = self._pipeline._text(self.tokens, self._params)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
            return ""
        ready = text[: len(text) - self._hold] if self._hold else text
        return self._show(ready)

    def finish(self) -> str:
        """The generation ended: the rest of its text (held-back text included)."""
        return self._show(self.text)

    @property
    def text(self) -> str:
        """The whole text so far, cut before a stop string."""
        return self._pipeline._text(self.tokens, self._params)

    def _show(self, ready: str) -> str:
        if ready.startswith(self.shown) and len(ready) > len(self.shown):
            piece, self.shown = ready[len(self.shown):], ready
            return piece
        return ""


class TextStream:
    """Iterator of text pieces as tokens are committed; `result` holds the `PipelineResult` at the end."""

    def __init__(self, pipeline: "Pipeline", prompt_ids: list[int], generation, params: SamplingParams):
        self._pipeline = pipeline
        self._prompt_ids = prompt_ids
        self._generation = generation
        self._params = params
        self.result: PipelineResult | None = None

    def __iter__(self) -> Iterator[str]:
        text = IncrementalText(self._pipeline, self._params)
        for chunk in self._generation.chunks():
            piece = text.add(chunk)
            if piece:
                yield piece
        piece = text.finish()
        if piece:
            yield piece
        done = self._generation.result
        if self._pipeline.tp is not None:
            self._pipeline.tp.check_outputs(done.tokens)
        self.result = PipelineResult(text.text, done.tokens, done.finish_reason, done.stats, self._prompt_ids)


class Pipeline:
    """Target model + drafter + verifier + acceptance policy + sampling defaults."""

    def __init__(self, validated: ValidatedPipeline, plugins: PluginSet | None = None,
                 model: Any = None, tokenizer: Any = None):
        """Build the components of a validated pipeline.

        :param model: an already loaded target model to use instead of `target.model`.
        :param tokenizer: its tokenizer (needed for text prompts and stop strings).
        """
        from specdec.budget import DraftBudget
        from specdec.cost import measure_batch_cost_model
        from specdec.engine import SpeculativeDecoder
        from specdec.linear_kernels import configure_linear_kernel
        from specdec.models import load_model, resolve_device, resolve_dtype
        from specdec.scheduler import StepScheduler

        self.config = validated
        self.plugins = plugins or default_plugins()
        registry = self.plugins.registry
        target = validated.spec.target
        self.tp = None  # a specdec.distributed.TensorParallel when the target is sharded over ranks
        if target.tp_size > 1:
            from specdec.distributed import start

            shard = getattr(model, "specdec_tp", None)
            if model is not None and (shard is None or shard.size != target.tp_size):
                raise InputError(f"a pipeline with target.tp_size {target.tp_size} loads its own target (each "
                                 f"rank its shard) or shares one sharded over as many ranks by another "
                                 f"pipeline; do not pass an unsharded model=")
            self.tp = start(target.tp_size, target.device)
            self.tp.check_same(validated.spec.model_dump(mode="json"), "the pipeline")
        self.device = self.tp.device if self.tp else resolve_device(target.device)
        self.dtype = resolve_dtype(target.dtype, self.device)
        base_dir = None if validated.source.startswith("<") else Path(validated.source).resolve().parent

        def locate(name: str | None) -> str | None:
            """A model named by a path relative to the pipeline file, if one exists there."""
            if name and base_dir is not None and not Path(name).is_absolute() and (base_dir / name).exists():
                return str(base_dir / name)
            return name

        if model is None:
            model, loaded_tokenizer = load_model(locate(target.model), device=self.device, dtype=self.dtype,
                                                 tp=self.tp)
            tokenizer = tokenizer or loaded_tokenizer
        self.model, self.tokenizer = model, tokenizer
        self.device, self.dtype = model.device, model.dtype
        self.linear_kernel = configure_linear_kernel(model, target.linear_kernel)

        loaded: dict[str, tuple[Any, Any]] = {}

        def load(name: str):
            if name not in loaded:
                loaded[name] = load_model(locate(name), device=self.device, dtype=self.dtype)
                configure_linear_kernel(loaded[name][0], target.linear_kernel)  # a draft model's runner too
            return loaded[name]

        def build_drafter(block: Any, location: str):
            component, params = validate_component("drafter", block, registry, location)
            return component.factory(context, params)

        context = BuildContext(model, tokenizer, self.device, self.dtype, load, build_drafter,
                               base_dir=base_dir)
        spec = validated.spec
        self.verifier = registry.get("verifier", spec.verifier.type).factory(context, validated.verifier_params)
        context.verifier = self.verifier
        drafter_component = registry.get("drafter", spec.drafter.type)
        self.drafter = drafter_component.factory(context, validated.drafter_params)
        policy_component = registry.get("acceptance", spec.acceptance.type)
        self.policy = policy_component.factory(context, validated.acceptance_params)
        self.lossless = bool(policy_component.lossless)
        if not self.lossless:
            logger.warning("acceptance policy '%s' is LOSSY: under sampling its outputs are not "
                           "distributed as plain sampling from the target model", spec.acceptance.type)
        self.sampling = spec.sampling
        decode = self._decode if tokenizer is not None else None
        budget = None
        if spec.scheduler.draft_budget == "auto" and self.tp is None:
            # (under tensor parallelism the budget would size drafts from each rank's own timings,
            # and ranks with different drafts diverge: drafts are sized as the drafter proposes)
            budget = DraftBudget(lambda batch_size: measure_batch_cost_model(model, batch_size))
        # One drafter instance per concurrent sequence; instances are reused across requests.
        self._build_context, self.drafter_component = context, drafter_component
        self.scheduler = StepScheduler(
            self.verifier, self.policy, [self.drafter],
            lambda: drafter_component.factory(context, validated.drafter_params),
            max_batch_size=spec.scheduler.max_batch_size, decode=decode, budget=budget)
        self.decoder = SpeculativeDecoder(self.verifier, self.drafter, self.policy, decode, scheduler=self.scheduler)

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, plugins: PluginSet | None = None, **kwargs) -> "Pipeline":
        """Load, validate and build a pipeline file."""
        plugins = plugins or default_plugins()
        data, text = load_yaml(path)
        return cls(validate_pipeline(data, plugins.registry, str(path), text), plugins, **kwargs)

    @classmethod
    def from_dict(cls, data: dict, plugins: PluginSet | None = None, **kwargs) -> "Pipeline":
        """Validate and build a pipeline from a mapping shaped like the YAML file."""
        plugins = plugins or default_plugins()
        return cls(validate_pipeline(data, plugins.registry, "<dict>"), plugins, **kwargs)

    # -- generation -------------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: text as is, chat messages through the chat template, ids unchanged.

        Anything else is refused rather than guessed at: bytes iterate as integers (b"Hi" would be
        the ids [72, 105]) and True or 2.7 would pass as the ids 1 and 2.
        """
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            raise InputError("the prompt is bytes; decode it to text first (prompt.decode('utf-8')): "
                             "specdec never reads bytes as token ids")
        if isinstance(prompt, str):
            self._need_tokenizer("text prompts")
            check_text(prompt, "the prompt")
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if hasattr(prompt, "tolist") and hasattr(prompt, "ndim"):  # a tensor or array of ids
            if prompt.ndim != 1:
                raise InputError(f"a prompt of token ids must be 1-D, got shape {tuple(prompt.shape)}")
            prompt = prompt.tolist()
        if isinstance(prompt, dict) or not isinstance(prompt, Iterable):
            raise InputError(f"the prompt is of type {type(prompt).__name__}; {_PROMPT_KINDS}")
        items = list(prompt)
        if items and all(isinstance(item, dict) for item in items):
            self._need_tokenizer("chat messages")
            if not getattr(self.tokenizer, "chat_template", None):
                raise InputError("this model's tokenizer has no chat template; pass plain text instead")
            for index, message in enumerate(items):
                if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                    raise InputError(f"chat message {index} needs 'role' and 'content' keys with string values")
                check_text(message["content"], f"chat message {index}")
            from specdec.models import chat_token_ids

            return chat_token_ids(self.tokenizer, items)
        for index, item in enumerate(items):
            if not isinstance(item, numbers.Integral) or isinstance(item, bool):
                raise InputError(f"prompt item {index} is {type(item).__name__} {item!r:.40}; {_PROMPT_KINDS}")
            if item < 0:
                raise InputError(f"prompt item {index} is the token id {item}; token ids are >= 0")
        return [int(token) for token in items]

    def params(self, **overrides) -> SamplingParams:
        """The pipeline's sampling defaults with overrides applied (None values are ignored).

        Raises `InputError` for an invalid override, or one the acceptance policy cannot run with.
        """
        overrides = {key: value for key, value in overrides.items() if value is not None}
        params = self.sampling.replace(**overrides) if overrides else self.sampling
        problem = sampling_problem(self.config.acceptance_params, params)
        if problem:
            raise InputError(problem)
        return params

    def generate(self, prompt: Prompt, *, max_draft_tokens: int | None = None, **overrides) -> PipelineResult:
        """Generate a completion; keyword arguments override the pipeline's sampling defaults.

        :param max_draft_tokens: cap this request's drafts (0 = plain decoding for it).

        Safe to call from several threads: their requests share the step scheduler's batched
        forwards (up to `scheduler.max_batch_size` at once; more wait for a slot).
        """
        stream = self.stream(prompt, max_draft_tokens=max_draft_tokens, **overrides)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: Prompt, *, max_draft_tokens: int | None = None, **overrides) -> TextStream:
        """Like `generate`, but iterate the returned object for text pieces as they are committed."""
        prompt_ids = self.encode(prompt)
        params = self._shared([prompt_ids], self.params(**overrides), max_draft_tokens)[0]
        handle = self.scheduler.submit(prompt_ids, params, max_draft_tokens=max_draft_tokens)
        return TextStream(self, prompt_ids, self.scheduler.stream(handle), params)

    def drafter_with(self, overrides: dict[str, Any], *, location: str = "drafter.params"):
        """A new drafter of the pipeline's drafter type, with the pipeline's params and `overrides`
        applied over them, for one request: `scheduler.submit(..., drafter=...)`.

        The merged params are validated by the drafter's own params model, as the YAML block is;
        a `ConfigError` names each bad field as `location.<field>`.
        """
        from specdec.config import validate_params

        if not isinstance(overrides, dict):
            raise ConfigError(f"{location}: must be a mapping of the drafter's params, got {type(overrides).__name__}")
        component = self.drafter_component
        params = validate_params(component.params_model, {**self.config.spec.drafter.params, **overrides}, location)
        return component.factory(self._build_context, params)

    def incremental_text(self, params: SamplingParams) -> IncrementalText:
        """Text pieces of one generation as its tokens arrive (what `stream` yields), for callers
        that drive the scheduler themselves (a server reading `SequenceHandle.chunks`)."""
        return IncrementalText(self, params)

    def generate_batch(self, prompts: Sequence[Prompt], *, max_draft_tokens: int | None = None,
                       **overrides) -> list[PipelineResult]:
        """Generate a completion for every prompt, decoding them together in batches of up to
        `scheduler.max_batch_size` sequences; results in prompt order.

        Every prompt is checked before any generation starts; a request that fails at run time
        raises its error once the others have finished.
        """
        params = self.params(**overrides)
        encoded = [self.encode(prompt) for prompt in prompts]
        shared = self._shared(encoded, params, max_draft_tokens)
        handles = [self.scheduler.submit(ids, own, max_draft_tokens=max_draft_tokens)
                   for ids, own in zip(encoded, shared)]
        self.scheduler.run(handles)
        if self.tp is not None:
            self.tp.check_outputs([handle.result.tokens if handle.result else None for handle in handles])
        results = []
        for ids, handle in zip(encoded, handles):
            if handle.error is not None:
                raise handle.error
            done = handle.result
            results.append(PipelineResult(self._text(done.tokens, params), done.tokens, done.finish_reason,
                                          done.stats, ids))
        return results

    def _shared(self, prompts: Sequence[list[int]], params: SamplingParams,
                max_draft_tokens: int | None) -> list[SamplingParams]:
        """Each request's sampling params, identical on every rank of a tensor-parallel target.

        Unseeded requests get seeds drawn on rank 0 (one per request, as they would get fresh
        entropy each in one process), and a request that differs between ranks is refused before
        any forward. One process: `params` for every request, unchanged.
        """
        if self.tp is None:
            return [params] * len(prompts)
        if params.seed is None:
            base = self.tp.shared_seed()
            shared = [params.replace(seed=(base + index) % (1 << 63)) for index in range(len(prompts))]
        else:
            shared = [params] * len(prompts)
        self.tp.check_same(([list(ids) for ids in prompts], [own.model_dump(mode="json") for own in shared],
                            max_draft_tokens), "the requests")
        return shared

    # -- text -------------------------------------------------------------------------------------

    def _decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _text(self, tokens: Sequence[int], params: SamplingParams) -> str:
        if self.tokenizer is None:
            return ""
        text = self._decode(tokens)
        for stop in params.stop_strings:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        return text

    def _need_tokenizer(self, what: str) -> None:
        if self.tokenizer is None:
            raise InputError(f"{what} need a tokenizer; build the pipeline with tokenizer=... or pass token ids")
