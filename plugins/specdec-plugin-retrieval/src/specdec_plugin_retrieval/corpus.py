"""Read a corpus from local files and tokenize it into datastore documents.

Accepted inputs (a folder means every such file below it, in name order):

- `.jsonl`: one JSON object a line, either chat data (`messages`: a list of `{role, content}`,
  or ShareGPT `conversations`: a list of `{from, value}`) or a text record (`text_field`,
  default "text");
- `.json`: a list of such objects;
- any other file (`.txt`, `.md`, source code, ...): its whole text is one document.

A chat is rendered with the tokenizer's chat template when it has one, so that the store holds
the tokens the model actually sees (role headers and end-of-turn tokens included); otherwise each
message is one document.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from specdec import InputError, read_json_lines, read_text_file

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}
_BATCH = 256


@dataclass(frozen=True)
class Document:
    """One corpus record: plain `text`, or a chat (`messages`)."""

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None


def corpus_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named, with folders expanded (recursively, hidden files skipped)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(child for child in path.rglob("*") if child.is_file()
                           and not any(part.startswith(".") for part in child.relative_to(path).parts))
            if not found:
                raise InputError(f"the corpus folder {path} has no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"corpus file {path} does not exist")
    return files


def read_documents(paths: Sequence[str | os.PathLike], text_field: str = "text") -> Iterator[Document]:
    """Every document of the corpus files, in order."""
    for path in corpus_files(paths):
        suffix = path.suffix.lower()
        if suffix == ".jsonl":  # streamed a line at a time: a corpus may be larger than memory
            for number, record in read_json_lines(path):
                yield _record(record, f"{path}:{number}", text_field)
        elif suffix == ".json":
            data = _parse(read_text_file(path, "corpus file", InputError), str(path))
            if not isinstance(data, list):
                raise InputError(f"{path}: a .json corpus file must hold a list of records")
            for number, record in enumerate(data):
                yield _record(record, f"{path}[{number}]", text_field)
        else:
            yield Document(text=read_text_file(path, "corpus file", InputError))


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise InputError(f"{where}: not valid JSON: {error}") from None


def _record(record: Any, where: str, text_field: str) -> Document:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record or "conversations" in record:
        raw = record.get("messages", record.get("conversations"))
        if not isinstance(raw, list):
            raise InputError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        messages = []
        for index, message in enumerate(raw):
            if isinstance(message, dict) and "role" in message and "content" in message:
                role, content = message["role"], message["content"]
            elif isinstance(message, dict) and "from" in message and "value" in message:
                role, content = _SHAREGPT_ROLES.get(str(message["from"]).lower(), str(message["from"])), message["value"]
            else:
                raise InputError(f"{where}: message {index} needs 'role' and 'content' (or ShareGPT "
                                 f"'from' and 'value')")
            if not isinstance(content, str):
                raise InputError(f"{where}: message {index} content must be a string")
            messages.append({"role": str(role), "content": content})
        return Document(messages=tuple(messages))
    if text_field in record:
        if not isinstance(record[text_field], str):
            raise InputError(f"{where}: field '{text_field}' must be a string")
        return Document(text=record[text_field])
    raise InputError(f"{where}: the record has neither '{text_field}' nor 'messages'; pick the text "
                     f"field with --text-field (fields here: {', '.join(map(str, record)) or 'none'})")


def tokenize_documents(documents: Iterable[Document], tokenizer: Any, *,
                       chat_template: bool = True) -> Iterator[list[int]]:
    """Token ids of each document (chats through the chat template when there is one)."""
    use_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
    batch: list[str] = []
    for document in documents:
        if document.messages is not None:
            if use_template and document.messages:
                batch.append(tokenizer.apply_chat_template(list(document.messages), tokenize=False))
            else:
                batch.extend(message["content"] for message in document.messages)
        elif document.text is not None:
            batch.append(document.text)
        if len(batch) >= _BATCH:
            yield from _encode(tokenizer, batch)
            batch = []
    if batch:
        yield from _encode(tokenizer, batch)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # rendered chats already hold their special tokens as text; add none of our own
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def load_tokenizer(name_or_path: str | None):
    """The tokenizer of a model as specdec loads it (None = the default model), without the weights."""
    from transformers import AutoTokenizer

    from specdec import checkpoint_source

    source = checkpoint_source(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot load a tokenizer from {source!r} (specdec does not download; pass a local "
                         f"folder or an already-downloaded model): {error}") from None


def build_from_corpus(paths: Sequence[str | os.PathLike], tokenizer: Any, output: str | os.PathLike, *,
                      text_field: str = "text", chat_template: bool = True, overwrite: bool = False,
                      progress: bool = False):
    """Tokenize the corpus files and write a store at `output` (see `store.build_store`)."""
    from specdec_plugin_retrieval.store import build_store, tokenizer_identity

    files = corpus_files(paths)
    documents = tokenize_documents(read_documents(files, text_field), tokenizer, chat_template=chat_template)
    if progress:
        from tqdm import tqdm

        documents = tqdm(documents, desc="tokenizing", unit=" docs")
    notify = (lambda message: print(f"specdec: {message}", flush=True)) if progress else None
    return build_store(documents, output, tokenizer_identity(tokenizer), overwrite=overwrite,
                       sources=[str(path) for path in files], progress=notify)
