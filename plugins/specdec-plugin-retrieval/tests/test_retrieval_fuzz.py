"""Fuzz test: a damaged REST store opens, or is refused with a specdec error naming it.

Random corruptions (truncation, byte flips, wrong JSON types in meta.json, arrays of another
dtype or shape) of a small store built once. Whatever survives the checks on opening and on
building the pipeline must still decode exactly what plain decoding does: a store only proposes
drafts, so damage may cost speed, never correctness.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from specdec import Pipeline, SpecdecError
from specdec.testing import TINY_TOKENIZER_VOCAB, damage_bytes, tiny_llama, tiny_tokenizer
from specdec_plugin_retrieval.store import META, SUFFIXES, TOKENS, open_store

FUZZ = settings(max_examples=int(os.environ.get("SPECDEC_FUZZ_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROMPT = "the cat sat on the mat. the cat sat on the"
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=6) | st.sampled_from(["uint16", "int64", "float32", "object"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                     max_size=3),
                           max_leaves=8)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A store, the tiny model it fits and what plain greedy decoding of PROMPT gives."""
    from specdec_plugin_retrieval.corpus import build_from_corpus

    tokenizer = tiny_tokenizer()
    folder = tmp_path_factory.mktemp("fuzz-store")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in
                              ["the cat sat on the mat. the cat ate the rat.", "the dog sat on the log."]))
    store = build_from_corpus([corpus], tokenizer, folder / "store").path
    model = tiny_llama(3, vocab_size=TINY_TOKENIZER_VOCAB, eos_token_id=tokenizer.eos_token_id)
    greedy = {"sampling": {"max_new_tokens": 12, "stop_token_ids": []}}
    plain = Pipeline.from_dict(greedy, model=model, tokenizer=tokenizer).generate(PROMPT).token_ids
    return store, model, tokenizer, greedy, plain


def _meta_path(meta: dict, data) -> tuple[dict, list]:
    """A random key path into meta.json, to replace what it holds with a random JSON value."""
    path, node = [], meta
    while isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        path.append(key)
        if data.draw(st.booleans()):
            break
        node = node[key]
    return meta, path


@st.composite
def corruptions(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "json", "array"]))
    name = draw(st.sampled_from([META, TOKENS, SUFFIXES]))
    if kind == "truncate":
        return kind, name, draw(st.floats(0, 1))
    if kind == "flip":
        return kind, name, draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4))
    if kind == "json":
        return kind, META, (draw(st.data()), draw(JSON_VALUES))
    return kind, draw(st.sampled_from([TOKENS, SUFFIXES])), (draw(st.sampled_from(["int8", "uint16", "int64",
                                                                                      "float32"])),
                                                              draw(st.integers(0, 80)))


def corrupt(folder: Path, kind: str, name: str, how) -> None:
    file = folder / name
    if kind in ("truncate", "flip"):
        damage_bytes(file, kind, how)
    elif kind == "json":
        data, value = how
        meta, path = _meta_path(json.loads(file.read_bytes()), data)
        node = meta
        for key in path[:-1]:
            node = node[key]
        if path:
            node[path[-1]] = value
        file.write_text(json.dumps(meta if path else value))
    else:
        dtype, size = how
        np.save(file, np.arange(size).astype(dtype))


@FUZZ
@given(damage=corruptions(), verify=st.booleans())
def test_a_damaged_store_is_refused_by_name_or_still_decodes_exactly(setting, damage, verify):
    store, model, tokenizer, greedy, plain = setting
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "store"
        shutil.copytree(store, folder)
        corrupt(folder, *damage)
        try:
            open_store(folder, verify=verify)
            pipeline = Pipeline.from_dict({**greedy, "drafter": {"type": "rest", "params": {"store": str(folder)}}},
                                          model=model, tokenizer=tokenizer)
        except SpecdecError as error:
            assert str(folder) in str(error), str(error)
            event(f"refused: {type(error).__name__}")
            return
        event("opened and decoded")
        assert pipeline.generate(PROMPT).token_ids == plain  # damage may cost speed, never correctness
