"""The OpenAI-compatible request and response shapes, and the error body the server answers with.

Requests are pydantic models with `extra="forbid"`, as pipeline files are: an unknown field is a
400 that names it and the closest valid field. OpenAI fields that specdec does not implement are
accepted only at their no-op value (`n: 1`, `presence_penalty: 0`, `logprobs: null`, ...), so a
client never gets an answer computed without a setting it asked for. Fields left out take the
pipeline's `sampling` block, not OpenAI's defaults (a greedy pipeline stays greedy).

Every error is `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`, with the
field in `param` (dotted: `speculation.params.num_tokens`) and the message saying how to fix it.

This module is light (pydantic only): `specdec serve --help` imports nothing heavier.
"""

from __future__ import annotations

import difflib
import time
import types
import typing
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Most stop strings per request (OpenAI allows 4; more only slows every step's stop check).
MAX_STOP_STRINGS = 16


class ApiError(Exception):
    """An error answered as OpenAI does: HTTP `status` and the body of `body()`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# -- requests -------------------------------------------------------------------------------------


class Speculation(BaseModel):
    """specdec's per-request speculation (OpenAI clients send it with `extra_body`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool = Field(True, description="false: plain decoding for this request (its tokens are the same "
                                            "at temperature 0; only the speed differs)")
    max_draft_tokens: int | None = Field(None, ge=0, le=4096, description="cap on the draft tokens of each "
                                                                          "step for this request (0 = off)")
    params: dict[str, Any] = Field(default_factory=dict, description="the pipeline drafter's params to change "
                                                                     "for this request (numbers, booleans, choices)")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Any  # text, or a list of {"type": "text", "text": ...} parts

    @field_validator("content", mode="before")
    @classmethod
    def _text_content(cls, value: Any) -> str:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("must be a string or a list of text parts ({\"type\": \"text\", \"text\": ...})")
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"part {index} is not a text part (type {kind!r}); specdec serve takes text only: "
                                 f"{{\"type\": \"text\", \"text\": ...}}")
            texts.append(part["text"])
        return "".join(texts)


def _unsupported(value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        shown = " or ".join("null" if item is None else repr(item).lower() if isinstance(item, bool) else repr(item)
                            for item in allowed)
        raise ValueError(f"not supported by specdec serve; leave it out or send {shown}")
    return value


class RequestBase(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)  # an extension, as in vLLM
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    stop: Any = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, Any] | None = None
    user: str | None = None
    speculation: Speculation | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("must be a string or a list of strings")
        if any(not item for item in value):
            raise ValueError("stop strings must be non-empty")
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(value)}")
        return tuple(value)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n = 1 is supported: send n separate requests (they are decoded together)")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        return _unsupported(value, (0.0,))

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict | None) -> dict | None:
        if value:
            raise ValueError("not supported by specdec serve; leave it out or send {}")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def sampling_overrides(self) -> dict:
        """The `SamplingParams` fields this request sets (the others: the pipeline's sampling block)."""
        overrides = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed,
                     "max_new_tokens": self.new_tokens(), "stop_strings": self.stop or None}
        return {key: value for key, value in overrides.items() if value is not None}


class CompletionRequest(RequestBase):
    prompt: Any
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> str | list[int]:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
            value = value[0]  # a batch of one prompt
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(item, list) or isinstance(item, str) for item in value):
            raise ValueError(f"got {len(value)} prompts; send one prompt per request (they are decoded together)")
        if isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return value
        raise ValueError("must be a string or a list of token ids")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        return _unsupported(value, (False,))

    @field_validator("suffix", "logprobs")
    @classmethod
    def _absent(cls, value: Any) -> Any:
        return _unsupported(value, (None,))

    @field_validator("best_of")
    @classmethod
    def _best_of_one(cls, value: int | None) -> int | None:
        return _unsupported(value, (None, 1))


class ChatCompletionRequest(RequestBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        return _unsupported(value, (None, False))

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        return _unsupported(value, (None,))

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# -- turning pydantic's errors into one OpenAI error ---------------------------------------------


def validation_error(errors: list[dict], model: type[BaseModel]) -> ApiError:
    """A 400 naming every problem of a request body; `param` is the first bad field.

    :param errors: pydantic's `errors()`.
    """
    problems: list[tuple[str, str]] = []
    for item in errors:
        location = tuple(item.get("loc", ()))
        kind = item.get("type", "")
        if kind in ("model_type", "model_attributes_type", "dict_type") and not location:
            return ApiError(400, "the request body must be a JSON object")
        problems.append((_dotted(location), _message(item, model, location)))
    if not problems:
        return ApiError(400, "the request body is invalid")
    message = "; ".join(f"{param}: {text}" if param else text for param, text in problems)
    return ApiError(400, message, param=problems[0][0] or None)


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
           "less_than": ("<", "lt")}


def _message(item: dict, model: type[BaseModel], location: tuple) -> str:
    kind, context = item.get("type", ""), item.get("ctx") or {}
    if kind == "extra_forbidden":
        fields = _fields_at(model, location[:-1])
        close = difflib.get_close_matches(str(location[-1]), fields, n=1)
        return ("unknown field" + (f" (did you mean '{close[0]}'?)" if close else "")
                + (f"; valid fields: {', '.join(fields)}" if fields else ""))
    if kind == "missing":
        return "required field is missing"
    if kind in _BOUNDS:
        word, key = _BOUNDS[kind]
        return f"must be {word} {context[key]}"
    if kind == "literal_error":
        return f"must be one of {context.get('expected')}"
    if kind == "too_short" and location and location[-1] == "messages":
        return "give at least one message"
    message = item.get("msg", "invalid value")
    return message.removeprefix("Value error, ")


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """Field names of the model found at `path` inside `model` (through lists and optionals)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        current = _model_in(current)
        if current is None or part not in current.model_fields:
            return []
        current = current.model_fields[part].annotation
    found = _model_in(current)
    return list(found.model_fields) if found is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _dotted(location: tuple) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse(model: type[BaseModel], data: Any) -> BaseModel:
    """Validate a decoded JSON body; a 400 `ApiError` names the bad fields."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False), model) from None


# -- what a request may change about speculation -----------------------------------------------


def tunable_fields(params_model: type[BaseModel]) -> list[str]:
    """The drafter params a request may change: numbers, booleans and choices. Fields naming
    models, files or nested drafters stay as the pipeline file sets them (a request must not make
    the server load a model or read a path)."""
    return [name for name, field in params_model.model_fields.items() if _scalar(field.annotation)]


def _scalar(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        return bool(members) and all(_scalar(member) for member in members)
    return annotation in (int, float, bool)


# -- responses -----------------------------------------------------------------------------------


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(rid: str, created: int, model: str, text: str, finish_reason: str, use: dict) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
            "usage": use}


def chat_completion(rid: str, created: int, model: str, text: str, finish_reason: str, use: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": use}


def completion_chunk(rid: str, created: int, model: str, text: str, finish_reason: str | None = None,
                     with_usage: bool = False) -> dict:
    chunk = {"id": rid, "object": "text_completion", "created": created, "model": model,
             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        chunk["usage"] = None
    return chunk


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
               with_usage: bool = False) -> dict:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if with_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(rid: str, created: int, model: str, obj: str, use: dict) -> dict:
    """The last chunk of a stream with `stream_options.include_usage`: no choices, the usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}
