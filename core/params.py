"""`SamplingParams`: how to sample one generation. Kept free of torch so configs validate fast."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from specdec.errors import InputError


MIN_TEMPERATURE = 1e-4


class SamplingParams(BaseModel):
    """How to sample one generation. Immutable; use `replace(...)` to derive a variant.

    `temperature == 0` means greedy decoding (argmax), and then `top_k`, `top_p` and `seed` are
    ignored. `stop_token_ids=None` means "the model's end-of-sequence tokens"; an empty tuple
    means "never stop on a token".
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; otherwise logits are divided by it")
    top_k: int | None = Field(None, ge=1, description="keep the k most likely tokens (None = all)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="keep the smallest set with mass >= top_p")
    # torch.Generator.manual_seed takes 64-bit values; a larger one would fail at the first step
    seed: int | None = Field(None, ge=0, le=2**64 - 1,
                             description="seed of the random source (None = fresh entropy)")
    max_new_tokens: int = Field(256, ge=1, description="upper bound on generated tokens")
    stop_token_ids: tuple[int, ...] | None = Field(None, description="None = the model's EOS tokens")
    stop_strings: tuple[str, ...] = Field((), description="stop once the generated text contains one")

    @field_validator("temperature")
    @classmethod
    def _finite_temperature(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number >= 0")
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}: dividing logits by a "
                             f"smaller temperature overflows")
        return value

    @field_validator("stop_token_ids")
    @classmethod
    def _non_negative_ids(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(token < 0 for token in value):
            raise ValueError("token ids must be >= 0")
        return value

    @field_validator("stop_strings")
    @classmethod
    def _non_empty_strings(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not text for text in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **overrides) -> "SamplingParams":
        """A copy with some fields changed, validated like the original.

        Raises `InputError` (not pydantic's ValidationError) naming each bad override: overrides
        come from API callers, who get specdec errors only.
        """
        try:
            return SamplingParams(**{**self.model_dump(), **overrides})
        except ValidationError as error:
            problems = "; ".join(f"{name}: {message}" for name, message in describe_errors(error))
            raise InputError(f"invalid sampling parameters: {problems}") from None


def describe_errors(error: ValidationError) -> list[tuple[str, str]]:
    """`(field, message)` for each problem of a `SamplingParams` validation, worded for users."""
    described = []
    for item in error.errors(include_url=False):
        name = ".".join(str(part) for part in item["loc"]) or "sampling"
        if item["type"] == "extra_forbidden":
            message = f"unknown sampling parameter; valid ones: {', '.join(SamplingParams.model_fields)}"
        else:
            message = item["msg"].removeprefix("Value error, ")
        described.append((name, message))
    return described
