"""Datastores: corpus formats, the on-disk round trip, and a clear error for every bad input."""

import json
import re

import numpy as np
import pytest

from specdec import InputError, ModelMismatchError
from specdec_plugin_retrieval.corpus import build_from_corpus, read_documents
from specdec_plugin_retrieval.store import META, SUFFIXES, TOKENS, build_store, open_store, tokenizer_identity
from specdec_plugin_retrieval.suffix_array import suffix_array


def test_round_trip_keeps_documents_apart_and_memory_maps(tiny_store, tokenizer, tiny_corpus):
    store = open_store(tiny_store.path, verify=True)
    assert isinstance(store.tokens, np.memmap) and isinstance(store.suffixes, np.memmap)
    assert store.tokens.dtype == np.uint16 and store.separator == 65535
    documents = np.split(store.tokens, np.flatnonzero(store.tokens == store.separator) + 1)[:-1]
    assert [tokenizer.decode(document[:-1].tolist()) for document in documents] == tiny_corpus
    assert store.suffixes.tolist() == suffix_array(np.asarray(store.tokens)).tolist()
    meta = json.loads((store.path / META).read_text())
    assert meta["num_documents"] == len(tiny_corpus) and meta["num_tokens"] == store.tokens.shape[0]
    assert meta["tokenizer"] == tokenizer_identity(tokenizer) and meta["format_version"] == 1
    store.check_tokenizer(tokenizer)


def test_a_store_for_another_tokenizer_is_refused(tiny_store, tokenizer):
    other = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>")
    other.add_tokens(["zz"])
    with pytest.raises(ModelMismatchError, match="different vocabulary; rebuild the store"):
        tiny_store.check_tokenizer(other)


def test_corpus_formats(tmp_path, tokenizer):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("plain text file")
    (tmp_path / "docs" / ".hidden.txt").write_text("skipped")
    (tmp_path / "chat.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
        + "\n\n" + json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
        + "\n" + json.dumps({"body": "custom field"}) + "\n")
    (tmp_path / "list.json").write_text(json.dumps([{"body": "from a json list"}]))
    documents = list(read_documents([tmp_path / "docs", tmp_path / "list.json"], text_field="body"))
    assert [document.text for document in documents] == ["plain text file", "from a json list"]
    chats = list(read_documents([tmp_path / "chat.jsonl"], text_field="body"))
    assert chats[1].messages == ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    store = build_from_corpus([tmp_path / "chat.jsonl"], tokenizer, tmp_path / "store", text_field="body")
    text = tokenizer.decode(store.tokens[: int(np.argmax(store.tokens == store.separator))].tolist())
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"  # chat template
    plain = build_from_corpus([tmp_path / "chat.jsonl"], tokenizer, tmp_path / "plain", text_field="body",
                              chat_template=False)
    assert plain.meta["num_documents"] == 5  # one per message, plus the text record


@pytest.mark.parametrize("content, message", [
    ("{not json\n", "chat.jsonl:1: not valid JSON"),
    ('["a list"]\n', "chat.jsonl:1: expected a JSON object"),
    ('{"title": "x"}\n', "neither 'text' nor 'messages'.*fields here: title"),
    ('{"messages": [{"role": "user"}]}\n', "message 0 needs 'role' and 'content'"),
    ('{"text": 3}\n', "field 'text' must be a string"),
])
def test_bad_corpus_records_are_named(tmp_path, tokenizer, content, message):
    (tmp_path / "chat.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        build_from_corpus([tmp_path / "chat.jsonl"], tokenizer, tmp_path / "store")


def test_empty_and_missing_corpora(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n\n')
    with pytest.raises(InputError, match="the corpus is empty"):
        build_from_corpus([tmp_path / "empty.jsonl"], tokenizer, tmp_path / "store")
    assert not (tmp_path / "store").exists()
    with pytest.raises(InputError, match="does not exist"):
        build_from_corpus([tmp_path / "nothing.txt"], tokenizer, tmp_path / "store")
    (tmp_path / "void").mkdir()
    with pytest.raises(InputError, match="has no files"):
        build_from_corpus([tmp_path / "void"], tokenizer, tmp_path / "store")


def test_build_refuses_to_overwrite_unless_asked_and_checks_ids(tiny_store, corpus_file, tokenizer):
    with pytest.raises(InputError, match="already exists"):
        build_from_corpus([corpus_file], tokenizer, tiny_store.path)
    rebuilt = build_from_corpus([corpus_file], tokenizer, tiny_store.path, overwrite=True)
    assert rebuilt.meta["num_tokens"] == tiny_store.meta["num_tokens"]
    with pytest.raises(InputError, match="outside the tokenizer's vocabulary"):
        build_store([[1, 2, 99]], tiny_store.path.parent / "bad", {"name": "t", "vocab_size": 50,
                                                                    "vocab_sha256": "0"})


def test_wide_vocabularies_use_32_bit_tokens(tmp_path):
    store = build_store([[70_000, 3], [3, 70_000]], tmp_path / "wide",
                        {"name": "big", "vocab_size": 100_000, "vocab_sha256": "0"})
    assert store.tokens.dtype == np.uint32 and store.separator == 2**32 - 1
    assert store.tokens.tolist() == [70_000, 3, 2**32 - 1, 3, 70_000, 2**32 - 1]


def corrupt_meta(store, **changes):
    meta = json.loads((store.path / META).read_text())
    meta.update(changes)
    (store.path / META).write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, message", [
    (lambda store: (store.path / META).unlink(), "has no meta.json"),
    (lambda store: (store.path / META).write_text("{oops"), "meta.json is unreadable"),
    (lambda store: corrupt_meta(store, format="other"), "does not describe a retrieval store"),
    (lambda store: corrupt_meta(store, format_version=99), "format version 99.*upgrade specdec-plugin-retrieval"),
    (lambda store: corrupt_meta(store, tokenizer=None), "incomplete or malformed"),
    (lambda store: (store.path / TOKENS).unlink(), "is missing tokens.npy"),
    (lambda store: (store.path / SUFFIXES).write_bytes((store.path / SUFFIXES).read_bytes()[:-8]),
     "truncated or was replaced"),
    (lambda store: (store.path / TOKENS).write_bytes(b"x" * (store.path / TOKENS).stat().st_size),
     "not a readable numpy array"),
    (lambda store: np.save(store.path / SUFFIXES, np.asarray(store.suffixes)[::-1].copy()),
     "corrupted suffix array"),
])
def test_damaged_stores_are_refused_with_the_reason(tiny_store, damage, message):
    damage(tiny_store)
    with pytest.raises(InputError, match=message):
        open_store(tiny_store.path)


def test_full_verification_catches_altered_bytes(tiny_store):
    path = tiny_store.path / TOKENS
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # alter a token: same size, still a valid array
    path.write_bytes(bytes(data))
    open_store(tiny_store.path)  # the cheap checks cannot see it
    with pytest.raises(InputError, match="does not match its sha256"):
        open_store(tiny_store.path, verify=True)


def test_missing_store_folder(tmp_path):
    with pytest.raises(InputError, match="no retrieval store at .*specdec retrieval build"):
        open_store(tmp_path / "nowhere")


# every bad byte is past the first line, so an offset within the file (28, 14, 10) would not match
@pytest.mark.parametrize("name, content, where", [
    ("corpus.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "2: not UTF-8 text (byte 0xe9 at offset 13 of the line)"),
    ("corpus.json", b'[\n  {"text": "\xff"}\n]', "2: not UTF-8 text (byte 0xff at offset 12 of the line)"),
    ("notes.txt", b"fine\nfine\n\x80", "3: not UTF-8 text (byte 0x80 at offset 0 of the line)"),
])
def test_corpus_files_that_are_not_utf8_are_named(tmp_path, name, content, where):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=re.escape(f"{name}:{where}: save the file as UTF-8")):
        list(read_documents([tmp_path / name]))


def test_jsonl_records_may_hold_unicode_line_separators(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    assert [document.text for document in read_documents([tmp_path / "corpus.jsonl"])] == ["a\u2028b"]


@pytest.mark.parametrize("files", [["tokens.npy"], {"tokens.npy": 5, "suffix_array.npy": {}}, "x", None,
                                   {"tokens.npy": {"bytes": 1}}])
def test_a_malformed_files_entry_in_meta_is_named(tiny_store, files):
    corrupt_meta(tiny_store, files=files)
    with pytest.raises(InputError, match="meta.json is incomplete or malformed"):
        open_store(tiny_store.path)


def test_store_dtypes_other_than_token_and_index_types_are_refused(tiny_store):
    corrupt_meta(tiny_store, token_dtype="float64")
    with pytest.raises(InputError, match="lists dtypes 'float64'"):
        open_store(tiny_store.path)
