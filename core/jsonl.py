"""JSON Lines: the one reader for question, prompt, corpus, training and record files.

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


def json_lines(lines: Iterable[str], source: str | os.PathLike, *,
               on_error: Callable[[str], None] | None = None) -> Iterator[tuple[int, Any]]:
    """`(line number, value)` for every non-blank line, numbered from 1.

    :param lines: the lines (an open file, or `text.splitlines()`).
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
        raise InputError(f"{path}:{number}: not UTF-8 text (byte {error.start} of the line): save the "
                         f"file as UTF-8") from None
