"""Shared fixtures of the retrieval plugin's tests: a tiny tokenizer, a tiny corpus and store.

Also the settings specdec's own tests use (they apply when these tests run on their own):
reproducible hypothesis runs without deadlines, single-threaded torch for tiny models.
"""

import json
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from specdec.testing import tiny_tokenizer

settings.register_profile(
    "specdec-retrieval", derandomize=True, deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
if "HYPOTHESIS_PROFILE" not in os.environ:
    settings.load_profile("specdec-retrieval")
torch.set_num_threads(1)

#: A synthetic corpus for the tiny character-level tokenizer: repeated phrasings, as in real text.
TINY_CORPUS = [
    "the cat sat on the mat. the cat ate the rat.",
    "a cat and a dog sat on a log, then the dog ran.",
    "the quick brown fox jumps over the lazy dog.",
    "hello there, how are you? i am fine, thank you.",
    "the cat sat on the hat, and the hat was flat.",
]


@pytest.fixture(scope="session")
def tiny_corpus():
    return list(TINY_CORPUS)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def corpus_file(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in TINY_CORPUS))
    return path


@pytest.fixture()
def tiny_store(tmp_path, corpus_file, tokenizer):
    from specdec_plugin_retrieval.corpus import build_from_corpus

    return build_from_corpus([corpus_file], tokenizer, tmp_path / "store")
