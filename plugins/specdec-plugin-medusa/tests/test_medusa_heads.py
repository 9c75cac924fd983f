"""Heads: identity at initialisation, no shared blocks, files, and refusing another target."""

import copy
import json

import pytest
import torch

from specdec import InputError, ModelMismatchError, target_signature
from specdec.testing import tiny_llama

from specdec_plugin_medusa.heads import (CONFIG_FILE, WEIGHTS_FILE, HeadsConfig, MedusaHeads, load_heads,
                                         read_config, save_heads)


def config_for(model, **overrides):
    weight = model.get_output_embeddings().weight
    options = dict(num_heads=3, num_layers=2, hidden_size=weight.shape[1], vocab_size=weight.shape[0],
                   target=target_signature(model, "tiny"))
    options.update(overrides)
    return HeadsConfig(**options)


def randomized(heads, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return heads


def test_fresh_heads_are_the_identity_so_they_predict_what_the_lm_head_predicts():
    model = tiny_llama(0)
    heads = MedusaHeads(config_for(model), model.get_output_embeddings().weight)
    states = torch.randn(5, 32)
    logits = heads(states)
    assert logits.shape == (3, 5, 32)
    for head in range(3):
        torch.testing.assert_close(logits[head], model.lm_head(states))


def test_no_two_blocks_share_weights():
    model = tiny_llama(0)
    heads = MedusaHeads(config_for(model, num_heads=3, num_layers=3), model.get_output_embeddings().weight)
    blocks = [block for head in heads.blocks for block in head]
    assert len(blocks) == 9
    assert len({id(block) for block in blocks}) == 9
    assert len({block.linear.weight.data_ptr() for block in blocks}) == 9
    # training one block leaves the others untouched
    with torch.no_grad():
        blocks[0].linear.weight.add_(1.0)
    assert all(float(block.linear.weight.detach().abs().sum()) == 0.0 for block in blocks[1:])


def test_the_shared_lm_head_is_the_targets_own_weight_and_is_not_saved(tmp_path):
    model = tiny_llama(0)
    heads = MedusaHeads(config_for(model), model.get_output_embeddings().weight)
    assert heads.shared_lm_head.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert not [name for name in heads.state_dict() if "lm_head" in name]
    assert not [name for name, parameter in heads.named_parameters() if "lm_head" in name]


@pytest.mark.parametrize("own_lm_head", [False, True])
def test_saved_heads_load_back_with_the_same_outputs(tmp_path, own_lm_head):
    model = tiny_llama(0)
    heads = randomized(MedusaHeads(config_for(model, own_lm_head=own_lm_head), model.get_output_embeddings().weight))
    save_heads(heads, tmp_path / "heads")
    loaded = load_heads(str(tmp_path / "heads"), model)
    states = torch.randn(4, 32)
    torch.testing.assert_close(loaded(states), heads(states))
    assert read_config(tmp_path / "heads").own_lm_head is own_lm_head
    assert json.loads((tmp_path / "heads" / CONFIG_FILE).read_text())["target"]["name"] == "tiny"


def test_own_lm_heads_start_from_the_targets_lm_head_and_train_separately():
    model = tiny_llama(0)
    heads = MedusaHeads(config_for(model, own_lm_head=True), model.get_output_embeddings().weight)
    for projection in heads.lm_heads:
        torch.testing.assert_close(projection.weight, model.lm_head.weight)
    assert len({projection.weight.data_ptr() for projection in heads.lm_heads}) == 3


def test_heads_for_another_model_are_refused_with_a_clear_error(tmp_path):
    model = tiny_llama(0)
    save_heads(MedusaHeads(config_for(model), model.get_output_embeddings().weight), tmp_path / "heads")
    expected = r"trained for tiny .*the LM head weights differ.*specdec medusa train"
    with pytest.raises(ModelMismatchError, match=expected):
        load_heads(str(tmp_path / "heads"), tiny_llama(1))  # same shapes, other weights
    with pytest.raises(ModelMismatchError, match="hidden size 32 vs 48"):
        load_heads(str(tmp_path / "heads"), tiny_llama(0, hidden_size=48))
    with pytest.raises(ModelMismatchError, match="vocabulary size 32 vs 40"):
        load_heads(str(tmp_path / "heads"), tiny_llama(0, vocab_size=40))


def test_a_tensor_parallel_target_is_refused():
    model = tiny_llama(0)
    model.specdec_tp = object()  # what specdec sets on a target sharded over ranks
    with pytest.raises(ModelMismatchError, match="tensor-parallel target splits across ranks"):
        load_heads("default", model)


def test_the_same_target_in_half_precision_is_accepted(tmp_path):
    model = tiny_llama(0)
    save_heads(MedusaHeads(config_for(model), model.get_output_embeddings().weight), tmp_path / "heads")
    half = copy.deepcopy(model).to(torch.bfloat16)
    heads = load_heads(str(tmp_path / "heads"), half)
    assert heads.blocks[0][0].linear.weight.dtype == torch.bfloat16


def _rewrite_config(folder, **changes):
    path = folder / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _save_wrong_shapes(folder):
    from safetensors.torch import save_file

    model = tiny_llama(0)
    other = MedusaHeads(config_for(model, num_layers=1), model.get_output_embeddings().weight)
    tensors = {name: torch.zeros(2, 2) for name in other.state_dict()}
    save_file(tensors, str(folder / WEIGHTS_FILE))


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:-40]),
     "cannot read Medusa head weights .*heads.safetensors"),
    (lambda folder: (folder / WEIGHTS_FILE).write_bytes(b""), "cannot read Medusa head weights"),
    (lambda folder: (folder / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}!"),
     "cannot read Medusa head weights"),
    (_save_wrong_shapes, r"heads.safetensors does not match .*config.json .*wrong shape or type"),
    (lambda folder: _rewrite_config(folder, num_heads="4"), "num_heads must be an integer from 1 to 64, got '4'"),
    (lambda folder: _rewrite_config(folder, num_layers=10**9), "num_layers must be an integer from 1 to 64"),
    (lambda folder: _rewrite_config(folder, target=[1]), "target must be a JSON object"),
    (lambda folder: (folder / CONFIG_FILE).write_text("[1, 2]"), "config.json must hold a JSON object"),
    (lambda folder: (folder / CONFIG_FILE).write_bytes(b'{"format": "\xff"}'), "cannot read the Medusa heads config"),
    (lambda folder: _rewrite_config(folder, tree=[[0], ["x"]]), "recommended tree must be a list of paths"),
    (lambda folder: _rewrite_config(folder, tree=[[0], [0, 0, 0, 0]]), "recommended tree is invalid: path"),
    (lambda folder: _rewrite_config(folder, tree=[[99]]), "rank beyond the 32-token vocabulary"),
    (lambda folder: _rewrite_config(folder, accuracy={"per_rank": [["high"]]}), "accuracy.per_rank must list"),
], ids=["truncated", "empty", "bad-header", "wrong-shapes", "num-heads-string", "huge-layers", "target-list",
        "config-list", "config-not-utf8", "tree-types", "tree-too-deep", "tree-rank", "accuracy-types"])
def test_damaged_heads_folders_are_input_errors_naming_the_file(tmp_path, damage, message):
    model = tiny_llama(0)
    folder = save_heads(MedusaHeads(config_for(model), model.get_output_embeddings().weight), tmp_path / "heads")
    damage(folder)
    with pytest.raises(InputError, match=message) as error:
        load_heads(str(folder), model)
    assert str(folder) in str(error.value)


def test_a_bad_tree_in_the_heads_config_is_blamed_on_the_file_not_the_pipeline(tmp_path):
    from specdec import Pipeline
    from specdec.testing import tiny_tokenizer

    model = tiny_llama(0)
    folder = save_heads(MedusaHeads(config_for(model), model.get_output_embeddings().weight), tmp_path / "heads")
    _rewrite_config(folder, tree=[[0], [1, 1]])
    with pytest.raises(InputError) as error:
        Pipeline.from_dict({"drafter": {"type": "medusa", "params": {"heads": str(folder)}}},
                           model=model, tokenizer=tiny_tokenizer())
    assert str(folder / CONFIG_FILE) in str(error.value) and "drafter.params.tree" not in str(error.value)
    assert "needs its prefix [1]" in str(error.value)
