"""The methods a benchmark compares: specdec pipelines and Hugging Face `generate()` baselines.

Methods are planned first (labels, descriptions, what defines their measurements; no model is
loaded), then built: every pipeline shares one loaded target model, and the AR baseline (a
pipeline with the `none` drafter) is added when the user did not pass one.

Hugging Face baselines run `model.generate()` on the same target model, with the same prompt
token ids, `max_new_tokens` and stop tokens, and an explicit all-ones `attention_mask`:

- `generate`: plain decoding (one token per forward, so steps = new tokens);
- `prompt_lookup`: `prompt_lookup_num_tokens=N`;
- `assisted`: `assistant_model=` the draft model of each `draft_model` pipeline in the set;
- `early_exit`: `assistant_early_exit=LAYER` (only for models trained for it, e.g. LayerSkip).

`generate()` does not report its steps, so a forward pre-hook on the target counts its
full-depth forwards (early-exit drafting runs the same module with fewer layers and is not
counted) and records what each one fed and found cached; `metrics.steps_from_forwards` rebuilds
per-step drafted and committed counts from that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from specdec import ConfigError, ValidatedPipeline, validate_pipeline

HF_BASELINES = ("generate", "prompt_lookup", "assisted", "early_exit")
DEFAULT_HF_BASELINES = ("generate", "prompt_lookup", "assisted")


@dataclass(frozen=True)
class HFOptions:
    baselines: tuple[str, ...] = DEFAULT_HF_BASELINES
    explicit: bool = False  # the user named the baselines (so a missing prerequisite is an error)
    prompt_lookup_tokens: int = 10
    assistant_tokens: int | None = None  # None: Hugging Face's default num_assistant_tokens
    early_exit: int | None = None


@dataclass
class MethodPlan:
    label: str
    kind: str  # "specdec" or "hf"
    description: str
    signature: dict  # what defines its measurements; a resumed run refuses a changed one
    lossless: bool = True
    baseline: bool = False
    pipeline: ValidatedPipeline | None = None  # specdec methods
    hf_name: str | None = None  # hf methods: one of HF_BASELINES
    hf_kwargs: dict = field(default_factory=dict)
    assistant_of: str | None = None  # hf assisted: label of the pipeline whose draft model assists

    def info(self) -> dict:
        return {"label": self.label, "kind": self.kind, "description": self.description,
                "lossless": self.lossless, "baseline": self.baseline, "signature": self.signature}


@dataclass
class Measurement:
    output_ids: list[int]
    steps: int
    wall_seconds: float
    finish_reason: str
    stats: Any  # GenerationStats with per-step counters, or None when they are unknown
    draft_seconds: float | None = None  # None: the method does not report drafting time
    target_forwards: int | None = None  # hf methods: full-depth target forwards counted

    @property
    def new_tokens(self) -> int:
        return len(self.output_ids)


def _target_key(pipeline: ValidatedPipeline) -> tuple:
    from specdec import DEFAULT_MODEL

    target = pipeline.spec.target
    model = (target.model or DEFAULT_MODEL).strip()
    if model.lower() == DEFAULT_MODEL.lower():
        model = DEFAULT_MODEL
    return model, target.device, target.dtype, target.linear_kernel


def target_description(pipeline: ValidatedPipeline) -> dict:
    model, device, dtype, _ = _target_key(pipeline)  # (the kernel chosen goes into the environment)
    return {"model": model, "device": device, "dtype": dtype}


def plan_methods(pipelines: Sequence[ValidatedPipeline], registry, hf: HFOptions) -> list[MethodPlan]:
    """Labels and descriptions of every method, the AR baseline first; no model is loaded.

    :raises ConfigError: pipelines with different targets, duplicate labels, or an HF baseline
        whose prerequisite is missing.
    """
    pipelines = list(pipelines)
    if pipelines:
        keys = {_target_key(pipeline) for pipeline in pipelines}
        if len(keys) > 1:
            names = "; ".join(f"{pipeline.source}: {', '.join(map(str, _target_key(pipeline)))}"
                              for pipeline in pipelines)
            raise ConfigError("specdec bench compares methods on one target model, but the pipelines name "
                              f"different targets ({names}); benchmark each target in its own run")
    baseline_index = next((index for index, pipeline in enumerate(pipelines)
                           if pipeline.spec.drafter.type == "none"), None)
    if baseline_index is None:
        labels = {pipeline.label for pipeline in pipelines}
        target = pipelines[0].spec.target.model_dump() if pipelines else {}
        data = {"name": "ar" if "ar" not in labels else "ar-baseline", "target": target,
                "drafter": {"type": "none"}}
        pipelines.insert(0, validate_pipeline(data, registry, "<automatic AR baseline>"))
        baseline_index = 0
    pipelines.insert(0, pipelines.pop(baseline_index))

    plans: list[MethodPlan] = []
    for index, pipeline in enumerate(pipelines):
        spec = pipeline.spec
        lossless = bool(registry.get("acceptance", spec.acceptance.type).lossless)
        params = _params(pipeline.drafter_params)
        description = (f"specdec pipeline ({pipeline.source}): drafter {spec.drafter.type}"
                       + (f" ({params})" if params else "")
                       + f", verifier {spec.verifier.type}, acceptance {spec.acceptance.type}")
        if index == 0:
            description = "AR baseline: " + description
        plans.append(MethodPlan(
            label=pipeline.label, kind="specdec", description=description, lossless=lossless,
            baseline=index == 0, pipeline=pipeline,
            signature={"kind": "specdec", **spec.model_dump(mode="json", exclude={"sampling", "name"})}))

    drafting = [plan for plan in plans if plan.pipeline.spec.drafter.type == "draft_model"]
    for name in hf.baselines:
        if name == "generate":
            plans.append(_hf_plan("hf-generate", name, {}, "model.generate(), plain decoding"))
        elif name == "prompt_lookup":
            kwargs = {"prompt_lookup_num_tokens": hf.prompt_lookup_tokens}
            plans.append(_hf_plan("hf-prompt-lookup", name, kwargs,
                                  f"model.generate(prompt_lookup_num_tokens={hf.prompt_lookup_tokens})"))
        elif name == "assisted":
            if not drafting:
                if hf.explicit:
                    raise ConfigError("--hf-baselines assisted needs a pipeline with a draft_model drafter, "
                                      "whose draft model assists model.generate()")
                continue
            # one baseline per distinct draft model, named after the first pipeline that uses it
            owners: dict[str, MethodPlan] = {}
            for plan in drafting:
                owners.setdefault(plan.pipeline.drafter_params.model, plan)
            kwargs = {} if hf.assistant_tokens is None else {"num_assistant_tokens": hf.assistant_tokens}
            tokens = (f"num_assistant_tokens={hf.assistant_tokens}" if hf.assistant_tokens is not None
                      else "Hugging Face's default num_assistant_tokens and confidence threshold")
            for draft, owner in owners.items():
                label = "hf-assisted" if len(owners) == 1 else f"hf-assisted-{owner.label}"
                hf_plan = _hf_plan(label, name, kwargs, f"model.generate(assistant_model={draft}), {tokens}")
                hf_plan.assistant_of = owner.label
                hf_plan.signature["assistant_model"] = draft
                plans.append(hf_plan)
        elif name == "early_exit":
            if hf.early_exit is None:
                raise ConfigError("--hf-baselines early_exit needs --hf-early-exit LAYER (the layer the "
                                  "model was trained to exit at)")
        else:
            raise ConfigError(f"--hf-baselines: unknown baseline '{name}'; choose from "
                              f"{', '.join(HF_BASELINES)} or none")
    if hf.early_exit is not None:
        kwargs = {"assistant_early_exit": hf.early_exit}
        plans.append(_hf_plan("hf-early-exit", "early_exit", kwargs,
                              f"model.generate(assistant_early_exit={hf.early_exit})"))

    seen: dict[str, MethodPlan] = {}
    for plan in plans:
        if plan.label in seen:
            raise ConfigError(f"two methods are labelled '{plan.label}' ({seen[plan.label].description}; "
                              f"{plan.description}); give the pipelines distinct `name:` values")
        seen[plan.label] = plan
    return plans


def _params(params) -> str:
    values = params.model_dump(mode="json")
    return ", ".join(f"{key}={value}" for key, value in values.items()) if values else ""


def _hf_plan(label: str, name: str, kwargs: dict, description: str) -> MethodPlan:
    return MethodPlan(label=label, kind="hf", description=description, hf_name=name, hf_kwargs=dict(kwargs),
                      signature={"kind": "hf", "baseline": name, **kwargs})


# -- building ---------------------------------------------------------------------------------------

def build_methods(plans: Sequence[MethodPlan], plugins) -> list:
    """Load the target once and build every planned method on it (the baseline's target)."""
    from specdec import Pipeline

    built: dict[str, Any] = {}
    first = plans[0]
    baseline = Pipeline(first.pipeline, plugins)
    built[first.label] = SpecdecMethod(first, baseline)
    for plan in plans[1:]:
        if plan.kind == "specdec":
            built[plan.label] = SpecdecMethod(plan, Pipeline(plan.pipeline, plugins, model=baseline.model,
                                                              tokenizer=baseline.tokenizer))
    for plan in plans:
        if plan.kind != "hf":
            continue
        kwargs = dict(plan.hf_kwargs)
        if plan.hf_name == "assisted":
            kwargs["assistant_model"] = _assistant(built[plan.assistant_of].pipeline, baseline)
        built[plan.label] = HFMethod(plan, baseline.model, kwargs, baseline.verifier.eos_token_ids,
                                     baseline.verifier.max_positions)
    return [built[plan.label] for plan in plans]


def _assistant(pipeline, baseline):
    """The draft model a draft_model pipeline loaded (never the target object itself)."""
    from specdec import load_model

    model = getattr(getattr(pipeline.drafter, "runner", None), "model", None)
    if model is None or model is baseline.model:
        model, _ = load_model(pipeline.config.drafter_params.model, device=baseline.device, dtype=baseline.dtype)
    return model


class SpecdecMethod:
    """A specdec pipeline, timed around its engine call (no text streaming inside the timing)."""

    kind = "specdec"

    def __init__(self, plan: MethodPlan, pipeline):
        self.plan, self.label, self.pipeline = plan, plan.label, pipeline

    def encode(self, messages: list[dict]) -> list[int]:
        return self.pipeline.encode(messages)

    @property
    def built(self) -> str | None:
        """The drafter as built, when its class says more than its name (`__repr__`): what `auto`
        settings resolved to on this machine (lookahead's window, say), for the report."""
        drafter = self.pipeline.drafter
        return repr(drafter) if type(drafter).__repr__ is not object.__repr__ else None

    def prepare(self, max_tokens: int) -> None:
        """Build the drafter, and on CUDA the static cache and every CUDA graph, for one sequence
        of up to `max_tokens` tokens, so that no timed generation pays for a capture."""
        self.pipeline.scheduler.prepare(1, max_tokens)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.pipeline.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def generate(self, prompt_ids: list[int], params) -> Measurement:
        from specdec import synchronize

        device = self.pipeline.device
        synchronize(device)
        started = time.perf_counter()
        result = self.pipeline.decoder.generate(prompt_ids, params)
        synchronize(device)
        wall = time.perf_counter() - started
        stats = result.stats
        return Measurement(list(result.tokens), stats.steps, wall, result.finish_reason, stats,
                           draft_seconds=stats.draft_seconds)


class TargetForwards:
    """Records, during a `generate()` call, each full-depth forward of the target: (tokens fed,
    tokens cached before it). Early-exit drafting runs the same module with fewer layers; those
    forwards are not the target's and are skipped."""

    def __init__(self, model):
        self.model = model
        self.base = getattr(model, getattr(model, "base_model_prefix", ""), model)
        self.layers = self.base.config.num_hidden_layers
        self.forwards: list[tuple[int, int | None]] = []
        self._handle = None

    def __enter__(self) -> "TargetForwards":
        self.forwards = []
        self._handle = self.model.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _record(self, module, args, kwargs) -> None:
        if self.base.config.num_hidden_layers != self.layers:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        fed = int(ids.shape[-1]) if ids is not None else int(kwargs["inputs_embeds"].shape[-2])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else None
        self.forwards.append((fed, cached))


class HFMethod:
    """`model.generate()` with a fixed set of extra arguments (prompt lookup, an assistant ...)."""

    kind = "hf"

    def __init__(self, plan: MethodPlan, model, kwargs: dict, eos_token_ids: Sequence[int], max_positions: int):
        self.plan, self.label, self.model = plan, plan.label, model
        self.kwargs = kwargs
        self.eos_token_ids = list(eos_token_ids)
        self.max_positions = max_positions
        config = getattr(model, "generation_config", None)
        pad = getattr(config, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)
        self.counter = TargetForwards(model)

    def generate_kwargs(self, prompt_length: int, params) -> dict:
        kwargs = dict(self.kwargs, max_new_tokens=min(params.max_new_tokens, self.max_positions - prompt_length),
                      pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_ids or None)
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k or 0,
                          top_p=params.top_p)
        return kwargs

    def generate(self, prompt_ids: list[int], params) -> Measurement:
        import torch

        from specdec import GenerationStats, synchronize
        from specdec_plugin_bench.metrics import steps_from_forwards

        device = self.model.device
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        attention_mask = torch.ones_like(input_ids)  # else HF takes pad-token ids in the prompt for padding
        kwargs = self.generate_kwargs(len(prompt_ids), params)
        if not params.greedy and params.seed is not None:
            torch.manual_seed(params.seed)
        with self.counter:
            synchronize(device)
            started = time.perf_counter()
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            synchronize(device)
            wall = time.perf_counter() - started
        tokens = output[0, len(prompt_ids):].tolist()
        forwards = list(self.counter.forwards)
        steps_detail = steps_from_forwards(forwards, len(prompt_ids), len(tokens))
        stats = None
        if steps_detail is not None:
            stats = GenerationStats()
            for drafted, committed in steps_detail:
                stats.record_step(draft_tokens=drafted, draft_depth=drafted,
                                  accepted=min(committed - 1, drafted), new_tokens=committed)
        # plain generate makes one token per forward; assisted generation's steps are its target forwards
        steps = len(tokens) if self.plan.hf_name == "generate" else len(forwards)
        finish = "stop" if tokens and tokens[-1] in self.eos_token_ids else "length"
        return Measurement(tokens, steps, wall, finish, stats, target_forwards=len(forwards))
