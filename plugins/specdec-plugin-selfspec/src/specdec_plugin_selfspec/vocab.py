"""Truncated draft vocabularies (FR-Spec): draft over the N most frequent tokens only.

For a small model the vocabulary projection is a large share of a drafting step (SmolLM2-135M:
49,152 x 576, a fifth of the weights). Tokens a model writes are very unevenly used, so the N
most frequent ones cover nearly all of what it generates; a drafter that projects onto those N
rows drafts faster and loses only the drafts whose token lies outside them. Verification always
uses the full vocabulary, so output is unchanged: under sampling, the draft's q is zero outside
the N tokens and the rejection policy stays exact (a token outside is never drafted; it can
still be emitted as a correction or bonus token).

The frequency table comes from self-distilled text: the target answers a prompt set greedily and
its answer tokens are counted (`build_table`, `specdec selfspec vocab`); tokens it never saw
follow in id order (see `load_vocab`). One is shipped for the embedded default model. A table records the vocabulary it was counted on (size and a
fingerprint of the tokenizer's token-to-id map) and is refused for any other.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch

from specdec import InputError, ModelMismatchError, answer_chats, read_chat_prompts, tokenizer_fingerprint

TABLE_FORMAT = "specdec-selfspec-token-frequencies"
TABLE_VERSION = 1
#: Shipped tables by name; `default` is SmolLM2-135M-Instruct's.
SHIPPED_TABLES = {"default": "smollm2-135m-instruct.tokens.json"}


def data_path(name: str) -> Path:
    return Path(str(resources.files("specdec_plugin_selfspec") / "data" / name))


def default_prompts_path() -> Path:
    """The shipped prompt set (265 generic instructions from templates: explanations, poems,
    facts, stories, plans over 30 topics, arithmetic word problems, code, summaries, extraction,
    translation; none from Spec-Bench)."""
    return data_path("prompts.jsonl")


@dataclass(frozen=True)
class DraftVocab:
    """The draft's vocabulary: `token_ids[i]` is the target id of draft row i.

    :param token_ids: `[N]` int64 target token ids, most frequent first, each once.
    :param vocab_size: the target's logits width V.
    """

    token_ids: torch.Tensor
    vocab_size: int

    def __post_init__(self):
        ids = self.token_ids
        if ids.ndim != 1 or ids.numel() == 0:
            raise ValueError("a draft vocabulary needs at least one token id")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"draft vocabulary ids must lie in [0, {self.vocab_size})")
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError("draft vocabulary ids must be distinct")

    @property
    def size(self) -> int:
        return int(self.token_ids.numel())

    def to(self, device) -> "DraftVocab":
        return DraftVocab(self.token_ids.to(device), self.vocab_size)

    def widen(self, probs: torch.Tensor) -> torch.Tensor:
        """`[..., N]` probabilities over the draft rows -> `[..., V]` over the target's
        vocabulary, zero outside the draft's tokens (the exact q of a token drawn from them)."""
        wide = probs.new_zeros(probs.shape[:-1] + (self.vocab_size,))
        return wide.index_copy_(-1, self.token_ids.to(probs.device), probs)


def read_table(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"cannot read the token frequency table {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not a token frequency table (invalid JSON: {error})") from None
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise InputError(f"{path} is not a token frequency table (no \"format\": \"{TABLE_FORMAT}\"); "
                         f"build one with `specdec selfspec vocab`")
    if table.get("version") != TABLE_VERSION:
        raise InputError(f"{path} has table version {table.get('version')}; this plugin reads version "
                         f"{TABLE_VERSION}: rebuild it with `specdec selfspec vocab`")
    return table


def resolve_table(name: str, resolve_path=None) -> Path:
    """A shipped table name, or a path (relative paths through `resolve_path`, the pipeline's)."""
    if name in SHIPPED_TABLES:
        return data_path(SHIPPED_TABLES[name])
    return Path(resolve_path(name)) if resolve_path is not None else Path(name)


def load_vocab(path: str | os.PathLike, size: int, vocab_size: int, tokenizer=None,
               always: Sequence[int] = ()) -> DraftVocab:
    """The `size` most frequent tokens of a table, plus the `always` ids (end-of-sequence tokens:
    a draft that cannot say "stop" runs past every answer's end).

    A table ranks the tokens its text contained (the shipped one: about 3,200 distinct tokens in
    40,000). Beyond them the ranking continues in token id order: byte-level BPE vocabularies
    number their tokens in the order the tokenizer learned its merges, most frequent pair
    first, so a lower id is a more common token of the tokenizer's own training text.

    Refused (`ModelMismatchError`) when the table was counted on another vocabulary.
    """
    table = read_table(path)
    model = table.get("model", {})
    if int(model.get("vocab_size", -1)) != vocab_size:
        raise ModelMismatchError(
            f"the token frequency table {path} was counted for a {model.get('vocab_size')}-token vocabulary "
            f"({model.get('name', 'unknown model')}), the target has {vocab_size}; build one for this model "
            f"with `specdec selfspec vocab --model ... --out table.json`")
    if tokenizer is not None and model.get("tokenizer") and model["tokenizer"] != tokenizer_fingerprint(tokenizer):
        raise ModelMismatchError(
            f"the token frequency table {path} was counted with another tokenizer ({model.get('name')}); "
            f"its ids would name other tokens here: build one for this model with `specdec selfspec vocab`")
    if size > vocab_size:
        raise InputError(f"vocab_size {size} is larger than the target's vocabulary ({vocab_size} tokens)")
    counted = [int(token) for token, _ in table["tokens"]]
    ranked = counted + sorted(set(range(vocab_size)) - set(counted)) if len(counted) < size else counted
    chosen = list(dict.fromkeys([token for token in always if 0 <= token < vocab_size] + ranked[:size]))
    return DraftVocab(torch.tensor(chosen, dtype=torch.long), vocab_size)


def count_answers(model, tokenizer, prompts: Sequence[list[dict[str, str]]], *, max_new_tokens: int,
                  batch_size: int, progress: bool = False) -> tuple[Counter, int]:
    """Counts of the tokens of the model's greedy answers to the prompts (`specdec.answer_chats`;
    end-of-sequence included, padding not) and how many were counted."""
    counts: Counter = Counter()
    for _, _, answer in answer_chats(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, progress=progress):
        counts.update(answer)
    return counts, sum(counts.values())


def build_table(out: str | os.PathLike, *, model_name: str | None = None, prompts_path=None,
                max_new_tokens: int = 192, batch_size: int = 16, limit: int | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Answer the prompts with the model, count the answer tokens, write the table to `out`."""
    from specdec import load_model

    out = Path(out)
    prompts = read_chat_prompts(prompts_path or default_prompts_path())[:limit]
    model, tokenizer = load_model(model_name)
    counts, total = count_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, progress=progress)
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    table = {
        "format": TABLE_FORMAT, "version": TABLE_VERSION,
        "model": {"name": model_name or "SmolLM2-135M-Instruct (embedded default)", "vocab_size": vocab_size,
                  "tokenizer": tokenizer_fingerprint(tokenizer)},
        "source": {"prompts": str(prompts_path) if prompts_path else "shipped prompts.jsonl",
                   "num_prompts": len(prompts), "max_new_tokens": max_new_tokens, "decoding": "greedy",
                   "counted_tokens": total, "distinct_tokens": len(counts)},
        "tokens": sorted(([token, count] for token, count in counts.items()), key=lambda item: (-item[1], item[0])),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, separators=(",", ":")) + "\n", encoding="utf-8")
    return table


def coverage(table: dict[str, Any], sizes: Sequence[int]) -> dict[int, float]:
    """Share of the counted tokens that the `n` most frequent ones cover, for each n."""
    counts = [count for _, count in table["tokens"]]
    total = sum(counts) or 1
    return {size: sum(counts[:size]) / total for size in sizes}
