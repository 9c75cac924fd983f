"""JSON Lines: the one reader for question, prompt, corpus, training and record files.

`read_chat_prompts` reads the prompt sets that plugins answer with the target (self-distillation,
token counts): one format for all of them, so a prompt file made for one serves the others.

Every caller wants the same things: blank lines skipped, the line number of each value, and a
message naming `file:line` for a line that is not JSON. Strict readers let the `InputError`
propagate; lenient ones (a record file cut short by a killed run, a question file whose every
problem is reported at once) pass `on_error`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from specdec.errors import InputError

Messages = list[dict[str, str]]  # a chat conversation: {"role": ..., "content": ...} in order


def json_lines(lines: Iterable[str], source: str | os.PathLike, *,
               on_error: Callable[[str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """`(line number, value)` for every non-blank line, numbered from 1.

    :param lines: the lines, each ended by "\n" only (an open file); a text in memory goes through
        `parse_json_lines`, never `text.splitlines()` (see there).
    :param source: what to call the file in messages.
    :param on_error: called with the message of each line that is not valid JSON, which is then
        skipped; without it, such a line raises `InputError`.
    """
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            message = f"{source}:{number}: not valid JSON: {getattr(error, 'msg', error)}"
            if on_error is None:
                raise InputError(message) from None
            on_error(message)
            continue
        yield number, value


def parse_json_lines(text: str, source: str | os.PathLike, *,
                     on_error: Callable[[str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """`json_lines` of a whole text (a file already read, a response body).

    Lines end at "\n" only: `str.splitlines()` also ends them at U+2028, U+2029, U+0085 and other
    characters that JSON allows raw inside a string, and would cut a valid record in two.
    """
    return json_lines(text.split("\n"), source, on_error=on_error)


def read_json_lines(path: str | os.PathLike, *,
                    on_error: Callable[[str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """`json_lines` of a UTF-8 file, streamed (see there). Bytes that are not UTF-8 raise an
    `InputError` naming `file:line`, whatever `on_error` says: the file itself is wrong."""
    path = Path(path)
    with path.open("rb") as file:
        yield from json_lines((_decoded(raw, path, number) for number, raw in enumerate(file, 1)),
                              path, on_error=on_error)


def _decoded(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(not_utf8(path, number, raw[error.start], error.start)) from None


def not_utf8(path: str | os.PathLike, line: int, byte: int, offset: int) -> str:
    """What is wrong with a file that is not UTF-8 text: where (`file:line`, 1-based), which byte
    and its 0-based offset within that line, and how to fix it. Every reader of text files says it
    so (`read_json_lines`, `read_text_file`)."""
    return f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x} at offset {offset} of the line): save the file as UTF-8"


def read_chat_prompts(path: str | os.PathLike) -> list[Messages]:
    """Chat conversations to answer, from a prompt file.

    A `.jsonl` file holds one conversation a line: `{"prompt": "..."}` (one user message) or
    `{"messages": [{"role": ..., "content": ...}, ...]}`; any other file holds one prompt per
    non-empty line. Every problem is an `InputError` naming the file (and line).
    """
    path = Path(path)
    conversations: list[Messages] = []
    try:
        if path.suffix.lower() == ".jsonl":
            for number, item in read_json_lines(path):
                conversations.append(_conversation(item, path, number))
        else:
            with path.open("rb") as file:
                for number, raw in enumerate(file, 1):
                    line = _decoded(raw, path, number).strip()
                    if line:
                        conversations.append([{"role": "user", "content": line}])
    except OSError as error:
        raise InputError(f"cannot read the prompt file {path}: {error.strerror or error}") from None
    if not conversations:
        raise InputError(f"the prompt file {path} holds no prompts")
    return conversations


def chat_messages(value: Any, where: str) -> Messages:
    """`value` checked as a conversation read from a file: a non-empty list of objects with string
    `role` and `content` (other keys dropped); otherwise an `InputError` naming `where` (`file:line`)."""
    if not (isinstance(value, list) and value and all(
            isinstance(message, dict) and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str) for message in value)):
        raise InputError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}} objects")
    return [{"role": message["role"], "content": message["content"]} for message in value]


def _conversation(item: Any, path: Path, number: int) -> Messages:
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return [{"role": "user", "content": item["prompt"]}]
    if not isinstance(item, dict) or "messages" not in item:
        raise InputError(f"{path}:{number}: expected an object with 'prompt' (a string) or 'messages'")
    return chat_messages(item["messages"], f"{path}:{number}")
