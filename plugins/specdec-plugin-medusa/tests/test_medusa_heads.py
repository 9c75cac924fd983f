"""Heads: identity at initialisation, no shared blocks, files, and refusing another target."""

import copy
import json

import pytest
import torch

from specdec.errors import ModelMismatchError
from specdec.testing import tiny_llama

from specdec_plugin_medusa.heads import (CONFIG_FILE, HeadsConfig, MedusaHeads, load_heads, read_config,
                                         save_heads, target_signature)


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


def test_the_same_target_in_half_precision_is_accepted(tmp_path):
    model = tiny_llama(0)
    save_heads(MedusaHeads(config_for(model), model.get_output_embeddings().weight), tmp_path / "heads")
    half = copy.deepcopy(model).to(torch.bfloat16)
    heads = load_heads(str(tmp_path / "heads"), half)
    assert heads.blocks[0][0].linear.weight.dtype == torch.bfloat16
