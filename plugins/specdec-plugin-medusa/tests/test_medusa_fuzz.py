"""Fuzz test: a damaged Medusa heads folder loads, or is refused with a specdec error naming it.

Random corruptions (truncation, byte flips, wrong JSON types in config.json, tensors of another
shape or dtype) of a small heads folder saved once. Heads that survive the checks must still
decode exactly what plain decoding does: heads only propose drafts.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from specdec import Pipeline, SpecdecError, target_signature
from specdec.testing import TINY_TOKENIZER_VOCAB, damage_bytes, tiny_llama, tiny_tokenizer

from specdec_plugin_medusa.heads import CONFIG_FILE, WEIGHTS_FILE, HeadsConfig, MedusaHeads, save_heads

FUZZ = settings(max_examples=int(os.environ.get("SPECDEC_FUZZ_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROMPT = [3, 4, 5, 6, 3, 4]
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=6), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
CONFIG_KEYS = [(key,) for key in ("format", "format_version", "num_heads", "num_layers", "hidden_size",
                                   "vocab_size", "own_lm_head", "target", "tree", "accuracy", "training")] + [
    ("target", "lm_head_probe"), ("target", "lm_head_probe", "values"), ("target", "embedding_probe", "spread"),
    ("target", "vocab_size"), ("target", "architecture"), ("accuracy", "per_rank"), ("tree", 0)]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A heads folder for a tiny model (with a tree and accuracy), the model, and plain greedy output."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(0, vocab_size=TINY_TOKENIZER_VOCAB, eos_token_id=tokenizer.eos_token_id)
    weight = model.get_output_embeddings().weight
    config = HeadsConfig(num_heads=2, num_layers=1, hidden_size=weight.shape[1], vocab_size=weight.shape[0],
                         target=target_signature(model, "tiny"), tree=[[0], [1], [0, 0]],
                         accuracy={"per_rank": [[0.5, 0.2], [0.3, 0.1]]})
    heads = MedusaHeads(config, weight)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    folder = save_heads(heads, tmp_path_factory.mktemp("fuzz-heads") / "heads")
    greedy = {"sampling": {"max_new_tokens": 10, "stop_token_ids": []}}
    plain = Pipeline.from_dict(greedy, model=model, tokenizer=tokenizer).generate(PROMPT).token_ids
    return folder, model, tokenizer, greedy, plain


@st.composite
def corruptions(draw):
    kind = draw(st.sampled_from(["truncate", "flip", "json", "tensors"]))
    if kind in ("truncate", "flip"):
        name = draw(st.sampled_from([CONFIG_FILE, WEIGHTS_FILE]))
        if kind == "truncate":
            return kind, name, draw(st.floats(0, 1))
        return kind, name, draw(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4))
    if kind == "json":
        whole = draw(st.booleans())
        return kind, CONFIG_FILE, (None if whole else draw(st.sampled_from(CONFIG_KEYS)), draw(JSON_VALUES))
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
    return kind, WEIGHTS_FILE, (shape, draw(st.sampled_from([torch.float32, torch.float16, torch.int32])),
                                draw(st.booleans()))


def corrupt(folder: Path, kind: str, name: str, how) -> None:
    from safetensors.torch import load_file, save_file

    file = folder / name
    if kind in ("truncate", "flip"):
        damage_bytes(file, kind, how)
    elif kind == "json":
        path, value = how
        config = json.loads(file.read_bytes())
        if path is None:
            config = value
        else:
            node = config
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        file.write_text(json.dumps(config))
    else:  # one tensor replaced, or a tensor added, with a random shape and dtype
        shape, dtype, replace = how
        tensors = load_file(str(file))
        target = sorted(tensors)[0] if replace else "extra.weight"
        tensors[target] = torch.zeros(shape, dtype=dtype)
        save_file(tensors, str(file))


@FUZZ
@given(damage=corruptions())
def test_a_damaged_heads_folder_is_refused_by_name_or_still_decodes_exactly(setting, damage):
    folder, model, tokenizer, greedy, plain = setting
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "heads"
        shutil.copytree(folder, copy)
        corrupt(copy, *damage)
        try:
            pipeline = Pipeline.from_dict({**greedy, "drafter": {"type": "medusa", "params": {"heads": str(copy)}}},
                                          model=model, tokenizer=tokenizer)
        except SpecdecError as error:
            assert str(copy) in str(error), str(error)
            event(f"refused: {type(error).__name__}")
            return
        event("loaded and decoded")
        assert pipeline.generate(PROMPT).token_ids == plain  # damage may cost speed, never correctness
