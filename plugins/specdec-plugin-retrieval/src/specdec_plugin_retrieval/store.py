"""The REST datastore on disk: token array + suffix array + `meta.json`, memory-mapped on load.

Layout of a store folder (format version 1):

    meta.json          format, version, tokenizer identity, sizes, dtypes, file sizes and sha256
    tokens.npy         1-D uint16 (vocabularies < 65535) or uint32: every document's tokens, each
                       followed by the separator (the dtype's largest value, never a token id)
    suffix_array.npy   1-D int32 (int64 past 2**31 tokens): suffix start positions, sorted

The separator keeps continuations inside their document: a lookup never matches across it (no
context contains it) and continuations are cut at it. The tokenizer identity (name, vocabulary
size, sha256 of the sorted vocabulary) lets a pipeline refuse a store built for another
tokenizer, whose token ids would mean different text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from specdec import InputError, ModelMismatchError, file_sha256
from specdec_plugin_retrieval.suffix_array import suffix_array

FORMAT = "specdec-retrieval-store"
FORMAT_VERSION = 1
META = "meta.json"
TOKENS = "tokens.npy"
SUFFIXES = "suffix_array.npy"
_SPOT_CHECKS = 64  # suffix-array entries checked on every load (a full check hashes the files)


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """Name, vocabulary size and vocabulary hash of a Hugging Face tokenizer."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    return {"name": str(getattr(tokenizer, "name_or_path", "") or ""), "vocab_size": len(tokenizer),
            "vocab_sha256": digest}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < np.iinfo(np.uint16).max else np.dtype(np.uint32)


@dataclass(frozen=True)
class Store:
    """An opened store: `tokens` and `suffixes` are read-only memory maps."""

    path: Path
    meta: dict[str, Any]
    tokens: np.ndarray  # [N] uint16/uint32, documents each followed by `separator`
    suffixes: np.ndarray  # [N] int32/int64, sorted suffix starts

    @property
    def separator(self) -> int:
        return int(self.meta["separator"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    def max_token(self) -> int:
        """The largest token id stored (separators excluded; -1 when there is none). Reads the whole
        token file, in chunks: a damaged file can hold any value the dtype allows."""
        top, step = -1, 1 << 22
        for start in range(0, self.tokens.shape[0], step):
            chunk = np.asarray(self.tokens[start:start + step])
            chunk = chunk[chunk != self.separator]
            if chunk.size:
                top = max(top, int(chunk.max()))
        return top

    def check_vocabulary(self, vocab_size: int) -> None:
        """Refuse (ModelMismatchError) a store holding ids a `vocab_size`-token model cannot score:
        caught when the pipeline is built, not as a DraftError in the middle of a generation."""
        top = self.max_token()
        if top >= vocab_size:
            raise ModelMismatchError(
                f"the retrieval store {self.path} holds the token id {top}, outside the target model's "
                f"vocabulary [0, {vocab_size}): its {TOKENS} is damaged or it was built for another "
                f"model; rebuild it with `specdec retrieval build CORPUS --tokenizer MODEL -o {self.path}`")

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Refuse (ModelMismatchError) a tokenizer other than the one the store was built with."""
        built = self.meta["tokenizer"]
        current = tokenizer_identity(tokenizer)
        if current["vocab_sha256"] != built["vocab_sha256"]:
            raise ModelMismatchError(
                f"the retrieval store {self.path} was built with the tokenizer '{built['name']}' "
                f"({built['vocab_size']} tokens), but the target model's tokenizer '{current['name']}' "
                f"({current['vocab_size']} tokens) has a different vocabulary; rebuild the store with "
                f"the target's tokenizer: specdec retrieval build CORPUS --tokenizer MODEL -o STORE")

    def summary(self) -> str:
        meta = self.meta
        return (f"{self.path}: {meta['num_documents']} documents, {meta['num_tokens']} tokens "
                f"(separators included), tokenizer '{meta['tokenizer']['name']}' with "
                f"{meta['tokenizer']['vocab_size']} tokens, format version {meta['format_version']}")


def build_store(documents: Iterable[Sequence[int]], output: str | os.PathLike, tokenizer: dict[str, Any], *,
                overwrite: bool = False, sources: Sequence[str] = (),
                progress: Callable[[str], None] | None = None) -> Store:
    """Write a store of token-id documents to the folder `output` and open it.

    :param tokenizer: the identity of the tokenizer that produced the ids (`tokenizer_identity`).
    :param overwrite: replace an existing store at `output`.
    :param sources: where the documents came from, recorded in `meta.json`.
    :param progress: called with a message before each long stage.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists; choose another output folder or overwrite it")
    vocab_size = int(tokenizer["vocab_size"])
    dtype = token_dtype(vocab_size)
    separator = int(np.iinfo(dtype).max)
    pieces: list[np.ndarray] = []
    num_documents = 0
    for document in documents:
        ids = np.asarray(document, dtype=np.int64)
        if ids.size == 0:
            continue
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise InputError(f"document {num_documents} has token ids outside the tokenizer's "
                             f"vocabulary [0, {vocab_size})")
        pieces.append(ids.astype(dtype))
        pieces.append(np.array([separator], dtype=dtype))
        num_documents += 1
    if not num_documents:
        raise InputError("the corpus is empty: no document has any token; check the files and, for "
                         "JSONL, the text field name")
    tokens = np.concatenate(pieces)
    del pieces
    if progress:
        progress(f"sorting the suffixes of {tokens.shape[0]} tokens")
    suffixes = suffix_array(tokens)

    output.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        temp.chmod(0o755)  # mkdtemp makes it private; a store is an ordinary folder
        np.save(temp / TOKENS, tokens)
        np.save(temp / SUFFIXES, suffixes)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer": dict(tokenizer),
            "num_documents": num_documents,
            "num_tokens": int(tokens.shape[0]),
            "separator": separator,
            "token_dtype": dtype.name,
            "index_dtype": suffixes.dtype.name,
            "files": {name: {"bytes": (temp / name).stat().st_size, "sha256": file_sha256(temp / name)}
                      for name in (TOKENS, SUFFIXES)},
            "sources": [str(source) for source in sources],
            "created_by": f"specdec-plugin-retrieval {_version()}",
        }
        (temp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(temp, output)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return open_store(output)


def open_store(path: str | os.PathLike, *, verify: bool = False) -> Store:
    """Open a store folder with memory maps, checking its metadata and file sizes and spot-checking
    the suffix order; `verify` also checks each file's sha256 (reads everything).

    Raises InputError naming the problem for a missing, incomplete, corrupted or newer store.
    """
    path = Path(path)
    rebuild = "rebuild it with `specdec retrieval build`"
    if not path.is_dir():
        raise InputError(f"no retrieval store at {path}: build one with `specdec retrieval build CORPUS "
                         f"-o {path}` (or `specdec retrieval self-distill -o {path}`)")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} is not a retrieval store: it has no {META}; {rebuild}") from None
    except (OSError, ValueError) as error:
        raise InputError(f"the retrieval store's {path / META} is unreadable ({error}); {rebuild}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{path / META} does not describe a retrieval store; {rebuild}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise InputError(f"the retrieval store {path} has format version {version}, this plugin reads "
                         f"version {FORMAT_VERSION}; "
                         + ("upgrade specdec-plugin-retrieval" if newer else rebuild))
    try:
        tokenizer = meta["tokenizer"]
        expected = {TOKENS: (np.dtype(meta["token_dtype"]), int(meta["num_tokens"])),
                    SUFFIXES: (np.dtype(meta["index_dtype"]), int(meta["num_tokens"]))}
        files = meta["files"]
        int(tokenizer["vocab_size"]), str(tokenizer["vocab_sha256"]), int(meta["separator"])
        listed_sizes = {name: files[name]["bytes"] for name in expected}
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path / META} is incomplete or malformed ({type(error).__name__}: {error}); "
                         f"{rebuild}") from None
    if expected[TOKENS][0].name not in ("uint16", "uint32") or expected[SUFFIXES][0].name not in ("int32", "int64"):
        raise InputError(f"{path / META} lists dtypes {meta['token_dtype']!r} and {meta['index_dtype']!r}; a store "
                         f"holds uint16 or uint32 tokens and an int32 or int64 suffix array; {rebuild}")
    arrays = {}
    for name, (dtype, size) in expected.items():
        file = path / name
        if not file.is_file():
            raise InputError(f"the retrieval store {path} is missing {name}; {rebuild}")
        listed = listed_sizes[name]
        if file.stat().st_size != listed:
            raise InputError(f"the retrieval store file {file} is {file.stat().st_size} bytes but "
                             f"{META} says {listed}: the file is truncated or was replaced; {rebuild}")
        if verify and file_sha256(file) != files[name].get("sha256"):
            raise InputError(f"the retrieval store file {file} does not match its sha256: it is corrupted; {rebuild}")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except Exception as error:  # noqa: BLE001 - numpy's header parser fails in many ways (SyntaxError,
            # tokenize.TokenError, ...) on a damaged file, and every one of them means the file is damaged
            raise InputError(f"the retrieval store file {file} is not a readable numpy array ({error}); "
                             f"{rebuild}") from None
        if array.dtype != dtype or array.shape != (size,):
            raise InputError(f"the retrieval store file {file} holds {array.dtype}{list(array.shape)}, "
                             f"{META} says {dtype}[{size}]; {rebuild}")
        arrays[name] = array
    store = Store(path, meta, arrays[TOKENS], arrays[SUFFIXES])
    _spot_check(store, rebuild)
    return store


def _spot_check(store: Store, rebuild: str) -> None:
    """A few suffix-array entries must be in range and in order: catches a scrambled file cheaply."""
    size = store.tokens.shape[0]
    if size < 2:
        return
    picks = np.unique(np.linspace(0, size - 2, min(_SPOT_CHECKS, size - 1)).astype(np.int64))
    for at in picks.tolist():
        first, second = int(store.suffixes[at]), int(store.suffixes[at + 1])
        if not (0 <= first < size and 0 <= second < size) or \
                store.tokens[first:first + 16].tolist() > store.tokens[second:second + 16].tolist():
            raise InputError(f"the retrieval store {store.path} has a corrupted suffix array "
                             f"(entry {at} is out of range or out of order); {rebuild}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("specdec-plugin-retrieval")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"
