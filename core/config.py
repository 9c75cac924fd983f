"""Pipeline files: YAML (safe_load only) validated by pydantic in two phases.

Phase 1 checks the envelope: `target`, `drafter`, `verifier`, `acceptance`, `sampling`, each
component block being `{type: <registered name>, params: {...}}`. Phase 2 looks each `type` up
in the registry and validates its `params` with the component's own pydantic model. All
problems are reported together, each with its place in the file:

    pipeline.yaml:7: drafter.params.num_tokens: must be >= 1

A pipeline names registered components only, never import paths, so a shared YAML file cannot
run arbitrary code. Nothing here imports torch or loads a model.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from specdec.errors import ConfigError, SpecdecError
from specdec.jsonl import not_utf8
from specdec.params import SamplingParams
from specdec.registry import Registry

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ComponentSpec(BaseModel):
    """`{type: name, params: {...}}`: a registered component and its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    params: dict[str, Any] = Field(default_factory=dict)


#: `target.linear_kernel` values (specdec.linear_kernels): here, where importing costs no torch.
LINEAR_KERNELS = ("auto", "torch", "onednn", "onednn_packed")


class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="HF id or local path; omitted = the embedded default model")
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    tp_size: int = Field(1, ge=1, le=1024, description="ranks the target is sharded over (tensor parallel, under "
                                                       "torchrun; docs/scaling.md); 1 = one device, no collectives")
    linear_kernel: Literal[LINEAR_KERNELS] = Field(
        "auto", description="the kernel a float32 target's linear layers run on a CPU: torch (MKL), oneDNN on "
                            "the weights, oneDNN on a reordered copy, or auto: the fastest, timed at load "
                            "(specdec.linear_kernels)")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be cpu, cuda, cuda:N, mps or auto")
        return value


class SchedulerSpec(BaseModel):
    """How many sequences share a verification forward, and how drafts are sized under load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(8, ge=1, le=1024, description="most sequences verified in one forward")
    draft_budget: Literal["auto", "off"] = Field(
        "auto", description="auto: at batch sizes above 1, draft only as many tokens as pay at that batch "
                            "size (measured once per model and batch size); off: drafts as the drafter proposes")


class PipelineSpec(BaseModel):
    """The envelope of a pipeline file; component params are checked in phase 2."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    target: TargetSpec = TargetSpec()
    drafter: ComponentSpec = ComponentSpec(type="none")
    verifier: ComponentSpec = ComponentSpec(type="hf")
    acceptance: ComponentSpec = ComponentSpec(type="rejection")
    sampling: SamplingParams = SamplingParams()
    scheduler: SchedulerSpec = SchedulerSpec()


@dataclass(frozen=True)
class ValidatedPipeline:
    """A pipeline whose every component exists and whose every params block validated."""

    spec: PipelineSpec
    drafter_params: BaseModel
    verifier_params: BaseModel
    acceptance_params: BaseModel
    source: str

    @property
    def label(self) -> str:
        return self.spec.name or Path(self.source).stem


#: Deeper nesting is refused while composing: no pipeline needs it, and PyYAML's composer recurses
#: once per level, so a few hundred levels would end in a RecursionError instead of a message.
MAX_DEPTH = 64
#: A report lists this many problems, then how many more there are: a file with thousands of
#: mistakes is fixed a screen at a time, and a longer report only hides the first ones.
MAX_PROBLEMS = 20


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that turns every way it can fail into a `yaml.YAMLError` with a line.

    It also refuses duplicate mapping keys, which plain YAML loading resolves silently by keeping
    the last one: a pipeline with `drafter:` twice would run a drafter nobody meant to keep.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep; a pipeline file needs a few",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        # a scalar with an explicit tag (`!!int 0x`, `!!timestamp 5`, `!!float ''`) makes PyYAML's
        # constructors raise ValueError, IndexError, KeyError, ...: report it at the node
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception:  # noqa: BLE001 - any constructor failure is a bad value in the file
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.value!r} as !!{node.tag.rsplit(':', 1)[-1]}; "
                f"fix the value or remove the tag", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding a key is YAML's intended way to inherit
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if seen is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen.start_mark.line + 1}, "
                        f"again on line {key_node.start_mark.line + 1}); YAML would silently keep only the "
                        f"last one: merge them into one block", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse pipeline YAML safely; every problem is a `ConfigError` naming `source` and the line."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader checks the characters already here
        return loader.get_single_data()
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, max(error.position, 0)) + 1
        raise ConfigError(f"{source}:{line}: not valid YAML: the character U+{error.character:04X} is not allowed "
                          f"in YAML text; remove it") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: str | Path, what: str, error: type[SpecdecError] = ConfigError) -> str:
    """The text of a UTF-8 input file (a pipeline, a question set, a training file, a corpus file):
    a file that cannot be read or decoded raises `error` naming it, with the 1-based line of the
    first bad byte and its 0-based byte offset within that line, as `read_json_lines` does.

    :param what: what the file is, for the message ("pipeline file").
    :param error: the exception to raise (`ConfigError` for settings, `InputError` for data).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as failure:
        raise error(f"cannot read {what} {path}: {failure.strerror or failure}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as failure:
        line = raw.count(b"\n", 0, failure.start) + 1
        offset = failure.start - (raw.rfind(b"\n", 0, failure.start) + 1)
        raise error(not_utf8(path, line, raw[failure.start], offset)) from None


def load_yaml(path: str | Path) -> tuple[Any, str]:
    """Read a pipeline file (UTF-8) and parse it with `parse_yaml`; returns the data and the text."""
    text = read_text_file(path, "pipeline file")
    return parse_yaml(text, str(path)), text


def validate_pipeline(data: Any, registry: Registry, source: str = "<dict>",
                      text: str | None = None) -> ValidatedPipeline:
    """Validate pipeline data against the envelope and every component's params model.

    :param source: how to name the file in messages.
    :param text: the YAML text, to add line numbers to messages.
    """
    locate = _line_finder(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a pipeline file must be a mapping with keys target, "
                          f"drafter, verifier, acceptance, sampling; got {type(data).__name__}")
    # Phase 1: each section on its own, so that every problem in the file is reported at once.
    problems: list[str] = []
    sections: dict[str, Any] = {}
    known = list(PipelineSpec.model_fields)
    for key, value in data.items():
        if key not in PipelineSpec.model_fields:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(_where(source, locate, (key,)) + f"{key}: unknown section{hint}; "
                            f"valid sections: {', '.join(known)}")
            continue
        try:
            sections[key] = getattr(PipelineSpec.model_validate({key: value}), key)
        except ValidationError as error:
            problems.append(_format(error, (), source, locate, PipelineSpec))
    spec = PipelineSpec(**sections)

    # Phase 2: every component block against its registered params model.
    validated: dict[str, BaseModel] = {}
    for kind, block in (("drafter", spec.drafter), ("verifier", spec.verifier),
                        ("acceptance", spec.acceptance)):
        if kind in data and kind not in sections:
            continue  # its envelope is already reported
        try:
            component = registry.get(kind, block.type)
        except KeyError as error:
            problems.append(_where(source, locate, (kind, "type")) + f"{kind}.type: {error.args[0]}")
            continue
        try:
            params = component.params_model.model_validate(block.params)
        except ValidationError as error:
            problems.append(_format(error, (kind, "params"), source, locate, component.params_model))
            continue
        problems.extend(_nested_problems(params, (kind, "params"), registry, source, locate))
        validated[kind] = params
    sampling_valid = "sampling" not in data or "sampling" in sections
    if "acceptance" in validated and sampling_valid:
        problem = sampling_problem(validated["acceptance"], spec.sampling)
        if problem:
            problems.append(_where(source, locate, ("acceptance", "type")) + f"acceptance.type: {problem}")
    if problems:
        raise ConfigError(summarize(problems))
    return ValidatedPipeline(spec, validated["drafter"], validated["verifier"],
                             validated["acceptance"], source)


def sampling_problem(acceptance_params: BaseModel | None, sampling: SamplingParams) -> str | None:
    """Why an acceptance policy cannot run with these sampling params, or None.

    A policy's params model may define `check_sampling(sampling) -> str | None` (the greedy policy
    needs temperature 0): checked here, when a file is validated or flags are given, instead of at
    the first decoding step after the model has loaded.
    """
    check = getattr(acceptance_params, "check_sampling", None)
    return check(sampling) if callable(check) else None


def summarize(problems: list[str], limit: int = MAX_PROBLEMS) -> str:
    """The first `limit` problem lines, then how many more there are."""
    lines = [line for problem in problems for line in problem.splitlines()]
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join(lines[:limit] + [f"... and {len(lines) - limit} more problems"])


def validate_component(kind: str, block: Any, registry: Registry, location: str) -> tuple[Any, BaseModel]:
    """Validate one `{type, params}` block (nested drafters of composite drafters use this)."""
    try:
        spec = ComponentSpec.model_validate(block)
    except ValidationError as error:
        raise ConfigError(_format(error, tuple(location.split(".")), "<pipeline>", None, ComponentSpec)) from None
    try:
        component = registry.get(kind, spec.type)
    except KeyError as error:
        raise ConfigError(f"{location}.type: {error.args[0]}") from None
    try:
        params = component.params_model.model_validate(spec.params)
    except ValidationError as error:
        raise ConfigError(_format(error, (*location.split("."), "params"), "<pipeline>", None,
                                  component.params_model)) from None
    return component, params


def validate_params(model: type[BaseModel], data: Any, location: str) -> BaseModel:
    """Validate a params block that does not come from a file (a request's overrides): a
    `ConfigError` names each bad field as `location.field`, worded as for pipeline files."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format(error, tuple(location.split(".")), None, None, model)) from None


def _nested_problems(params: BaseModel, prefix: tuple, registry: Registry, source: str, locate) -> list[str]:
    """Composite components expose nested drafter blocks via `nested_drafters()`; check them too.

    A composite may also define `nested_drafter_problem(relative, inner_params)`, which returns
    None or `(field, message)` when it cannot use a nested drafter so configured (`merge` refuses
    drafters that sample their drafts); the problem is reported at that field of the nested block.
    """
    nested = getattr(params, "nested_drafters", None)
    if nested is None:
        return []
    check = getattr(params, "nested_drafter_problem", None)
    problems = []
    for relative, block in nested():
        location = prefix + tuple(relative)
        try:
            component = registry.get("drafter", block.type)
        except KeyError as error:
            problems.append(_where(source, locate, location + ("type",))
                            + f"{_dotted(location)}.type: {error.args[0]}")
            continue
        try:
            inner = component.params_model.model_validate(block.params)
        except ValidationError as error:
            problems.append(_format(error, location + ("params",), source, locate, component.params_model))
            continue
        found = check(relative, inner) if callable(check) else None
        if found:
            field, message = found
            where = location + ("params", field)
            problems.append(_where(source, locate, where) + f"{_dotted(where)}: {message}")
        problems.extend(_nested_problems(inner, location + ("params",), registry, source, locate))
    return problems


# -- messages -----------------------------------------------------------------------------------


def _format(error: ValidationError, prefix: tuple, source: str, locate, model: type[BaseModel]) -> str:
    lines = []
    for item in error.errors(include_url=False):
        location = prefix + tuple(item["loc"])
        lines.append(_where(source, locate, location) + f"{_dotted(location)}: {_message(item, model, location, prefix)}")
    return "\n".join(lines)


def _message(item: dict, model: type[BaseModel], location: tuple, prefix: tuple) -> str:
    kind, context = item["type"], item.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be >= {context['ge']}"
    if kind == "greater_than":
        return f"must be > {context['gt']}"
    if kind == "less_than_equal":
        return f"must be <= {context['le']}"
    if kind == "less_than":
        return f"must be < {context['lt']}"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        fields = _fields_at(model, tuple(location[len(prefix):-1]))
        message = "unknown field"
        if fields:
            close = difflib.get_close_matches(str(location[-1]), fields, n=1)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            message += f"; valid fields: {', '.join(fields)}"
        return message
    if kind == "literal_error":
        return f"must be one of {context.get('expected')}"
    message = item["msg"]
    return message[len("Value error, "):] if message.startswith("Value error, ") else message


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """Field names of the (nested) pydantic model at `path` inside `model`."""
    current: Any = model
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = current.model_fields[part].annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _dotted(location: tuple) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _where(source: str | None, locate, location: tuple) -> str:
    if source is None:
        return ""
    line = locate(location) if locate else None
    return f"{source}:{line}: " if line else f"{source}: "


def _line_finder(text: str | None):
    """Map a location tuple to the line of the deepest YAML node that exists along it.

    Each mapping's keys are indexed on first use, so locating every problem of a file with
    thousands of keys takes linear time (scanning the keys per problem took minutes).
    """
    if not text:
        return None
    try:
        root = _StrictLoader(text).get_single_node()
    except (yaml.YAMLError, RecursionError):
        return None
    indexes: dict[int, dict[str, tuple[Any, Any]]] = {}

    def child_of(node, part):
        if isinstance(node, yaml.MappingNode):
            index = indexes.get(id(node))
            if index is None:
                index = indexes[id(node)] = {}
                for key, value in node.value:
                    index.setdefault(str(key.value), (key, value))
            found = index.get(str(part))
            return (found[1], found[0].start_mark.line + 1) if found else (None, None)
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            return child, child.start_mark.line + 1
        return None, None

    def locate(location: tuple) -> int | None:
        if root is None:
            return None
        node, line = root, root.start_mark.line + 1
        for part in location:
            child, child_line = child_of(node, part)
            if child is None:
                break
            node, line = child, child_line
        return line

    return locate
