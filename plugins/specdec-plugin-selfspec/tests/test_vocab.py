"""Truncated draft vocabularies: the shipped table, its refusals, and building one."""

import json

import pytest
import torch

from specdec import InputError, ModelMismatchError, main, tokenizer_fingerprint
from specdec.testing import save_tiny_model, tiny_tokenizer

from specdec_plugin_selfspec.vocab import (
    DraftVocab,
    coverage,
    load_vocab,
    read_table,
    resolve_table,
)


def test_widen_puts_draft_probabilities_at_their_target_ids_and_zero_elsewhere():
    vocab = DraftVocab(torch.tensor([5, 0, 3]), 8)
    wide = vocab.widen(torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64))
    assert wide.tolist() == [[0.3, 0.0, 0.0, 0.2, 0.0, 0.5, 0.0, 0.0]]
    with pytest.raises(ValueError, match="distinct"):
        DraftVocab(torch.tensor([1, 1]), 8)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        DraftVocab(torch.tensor([9]), 8)


def test_the_shipped_table_is_for_the_default_model_and_covers_its_answers():
    table = read_table(resolve_table("default"))
    assert table["model"]["vocab_size"] == 49152 and table["source"]["num_prompts"] >= 200
    shares = coverage(table, (1024, 4096, 8192))
    assert shares[1024] > 0.7 and shares[4096] > 0.98
    ids = [token for token, _ in table["tokens"]]
    assert len(ids) == len(set(ids)) and all(0 <= token < 49152 for token in ids)


def test_tables_are_refused_for_another_vocabulary_or_tokenizer(tmp_path):
    path = resolve_table("default")
    with pytest.raises(ModelMismatchError, match="49152-token vocabulary.*the target has 50000.*specdec selfspec vocab"):
        load_vocab(path, 1024, 50000)
    with pytest.raises(ModelMismatchError, match="another tokenizer"):
        load_vocab(path, 1024, 49152, tokenizer=tiny_tokenizer())
    top = load_vocab(path, 1024, 49152).token_ids.tolist()
    vocab = load_vocab(path, 1024, 49152, always=[40000])  # an id no answer used: added in front
    assert 40000 not in top and vocab.size == 1025 and vocab.token_ids.tolist() == [40000] + top
    broken = tmp_path / "t.json"
    broken.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError, match="not a token frequency table"):
        load_vocab(broken, 10, 49152)
    with pytest.raises(InputError, match="larger than the target's vocabulary"):
        load_vocab(path, 10 ** 6, 49152)
    counted = [token for token, _ in read_table(path)["tokens"]]
    wide = load_vocab(path, len(counted) + 100, 49152).token_ids.tolist()
    assert wide[:len(counted)] == counted  # counted tokens by count, then the others by id
    rest = wide[len(counted):]
    assert rest == sorted(rest) and not set(rest) & set(counted)


def test_the_vocab_command_counts_a_models_own_answers(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "tiny")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello there\nwhat is a cat?\ncount to three\n")
    out = tmp_path / "table.json"
    assert main(["selfspec", "vocab", "--out", str(out), "--model", model_dir, "--prompts", str(prompts),
                 "--max-new-tokens", "12", "--batch-size", "2", "--quiet"]) == 0
    table = read_table(out)
    assert table["source"]["num_prompts"] == 3 and 0 < table["source"]["counted_tokens"] <= 36
    assert table["model"]["tokenizer"] == tokenizer_fingerprint(tiny_tokenizer())
    counts = [count for _, count in table["tokens"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) == table["source"]["counted_tokens"]
    assert "wrote" in capsys.readouterr().out
    vocab = load_vocab(out, 2, table["model"]["vocab_size"], tokenizer=tiny_tokenizer())
    assert vocab.size == 2
