"""Training text for drafters that learn from the target: prompt sets, self-distillation and
corpus files (one home for Medusa heads, EAGLE draft models and any later trained drafter).

Everything ends up as `TokenSequence`s: token ids plus the spans whose tokens a drafter should
learn to predict (the assistant's answers in chat data, everything in plain text).

Files the trainer reads (`read_corpus`), one format per line of a `.jsonl` file:

- `{"token_ids": [...], "num_prompt_tokens": n}`: ids as they are (what `distill` writes);
  tokens from `n` on are learned;
- `{"messages": [{"role": ..., "content": ...}, ...]}`: rendered with the chat template; the
  assistant turns are learned;
- `{"prompt": "...", "response": "..."}` (or `"completion"`): a one-turn chat;
- `{"text": "..."}`: plain text, all of it learned.

A `.txt` file is plain text; blank lines separate documents.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from specdec import InputError, answer_chats, chat_messages, chat_token_ids, parse_json_lines, read_text_file


@dataclass(frozen=True)
class TokenSequence:
    """Token ids and the half-open spans `[start, end)` of tokens to learn."""

    token_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]


# -- self-distillation ----------------------------------------------------------------------------


def distill(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = 256,
            batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
            progress: bool = True) -> Iterator[dict]:
    """Answer every conversation with the target itself (`specdec.answer_chats`).

    Yields one record per conversation, in order, as `read_corpus` reads them:
    `{"messages": [... + assistant answer], "token_ids": [...], "num_prompt_tokens": n}`.
    `temperature` 0 answers greedily; otherwise answers are sampled (seeded per batch).
    """
    results: dict[int, dict] = {}
    for index, prompt, answer in answer_chats(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                              batch_size=batch_size, temperature=temperature, seed=seed,
                                              progress=progress):
        text = tokenizer.decode(answer, skip_special_tokens=True)
        results[index] = {
            "messages": list(conversations[index]) + [{"role": "assistant", "content": text}],
            "token_ids": prompt + answer,
            "num_prompt_tokens": len(prompt),
        }
    for index in range(len(conversations)):
        yield results[index]


def write_jsonl(records: Iterable[dict], path: str | Path) -> int:
    """Write records as JSON lines (to a temporary name first, so a partial file never looks done)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    count = 0
    with temporary.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    temporary.replace(path)
    return count


# -- corpus files -----------------------------------------------------------------------------------


def read_corpus(paths: Sequence[str | Path], tokenizer, *, max_length: int = 1024) -> list[TokenSequence]:
    """Read training files (formats in the module docstring) into token sequences.

    Sequences longer than `max_length` are cut into windows of at most that many tokens.
    """
    sequences: list[TokenSequence] = []
    for path in map(Path, paths):
        text = read_text_file(path, "the training file", InputError)
        if path.suffix == ".jsonl":
            for number, item in parse_json_lines(text, path):
                _check_object(item, path, number)
                sequences.extend(_windows(_record(item, tokenizer, path, number), max_length))
        else:
            for document in (part.strip() for part in text.split("\n\n")):
                if document:
                    ids = _plain_ids(tokenizer, document)
                    sequences.extend(_windows(TokenSequence(tuple(ids), ((0, len(ids)),)), max_length))
    if not sequences:
        raise InputError(f"the training files {', '.join(map(str, paths))} hold no text")
    return sequences


def _record(item: dict, tokenizer, path: Path, number: int) -> TokenSequence:
    if "token_ids" in item:
        ids = item["token_ids"]
        start = item.get("num_prompt_tokens", 0)
        if not (isinstance(ids, list) and all(isinstance(token, int) for token in ids)):
            raise InputError(f"{path}:{number}: 'token_ids' must be a list of integers")
        if not isinstance(start, int) or not 0 <= start <= len(ids):
            raise InputError(f"{path}:{number}: 'num_prompt_tokens' must be an integer in [0, {len(ids)}]")
        return TokenSequence(tuple(ids), ((start, len(ids)),))
    if "messages" in item:
        return _chat_sequence(tokenizer, chat_messages(item["messages"], f"{path}:{number}"))
    response = item.get("response", item.get("completion"))
    if isinstance(item.get("prompt"), str) and isinstance(response, str):
        return _chat_sequence(tokenizer, [{"role": "user", "content": item["prompt"]},
                                          {"role": "assistant", "content": response}])
    if isinstance(item.get("text"), str):
        ids = _plain_ids(tokenizer, item["text"])
        return TokenSequence(tuple(ids), ((0, len(ids)),))
    raise InputError(f"{path}:{number}: expected 'token_ids', 'messages', 'prompt' + 'response', or 'text'")


def _chat_sequence(tokenizer, messages: list[dict]) -> TokenSequence:
    """Render a conversation; each assistant turn (its end-of-turn token included) is a span."""
    ids = chat_token_ids(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(chat_token_ids(tokenizer, messages[:turn], add_generation_prompt=True)) if turn else 0
        end = len(chat_token_ids(tokenizer, messages[: turn + 1], add_generation_prompt=False))
        # templates end a turn with a newline after the end-of-turn token: do not learn it
        while end > start and tokenizer.decode([ids[end - 1]]).strip() == "":
            end -= 1
        if end > start:
            spans.append((start, end))
    return TokenSequence(tuple(ids), tuple(spans))


def _plain_ids(tokenizer, text: str) -> list[int]:
    return [int(token) for token in tokenizer(text, add_special_tokens=True)["input_ids"]]


def _windows(sequence: TokenSequence, max_length: int) -> list[TokenSequence]:
    """Cut a long sequence into windows, clipping spans to each window."""
    count = len(sequence.token_ids)
    if count <= max_length:
        return [sequence] if count >= 2 else []
    windows = []
    for number in range(math.ceil(count / max_length)):
        low, high = number * max_length, min((number + 1) * max_length, count)
        spans = tuple((max(start, low) - low, min(end, high) - low) for start, end in sequence.spans
                      if start < high and end > low)
        if spans and high - low >= 2:
            windows.append(TokenSequence(sequence.token_ids[low:high], spans))
    return windows


def _check_object(item, path: Path, number: int) -> None:
    if not isinstance(item, dict):
        raise InputError(f"{path}:{number}: each line must be a JSON object")
