"""Draft model files: specdec folders with their fingerprint, the EAGLE authors' EAGLE-1/2
layout, the EAGLE-3 layouts of SpecForge and vLLM's speculators, and export to EAGLE-3. Each
published layout is written by the test itself, key by key, from a random draft model."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from specdec import InputError, ModelMismatchError
from specdec.testing import tiny_llama, tiny_tokenizer

from specdec_plugin_eagle.build import new_draft_model
from specdec_plugin_eagle.checkpoints import export_eagle3, load_draft, save_draft
from specdec_plugin_eagle.model import EagleDraftModel

LAYER_KEYS = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
              "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
              "post_attention_layernorm.weight"]


def target():
    return tiny_llama(0, vocab_size=32, num_layers=4)


def randomized(model: EagleDraftModel, seed: int = 1) -> EagleDraftModel:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def outputs(model: EagleDraftModel, features: torch.Tensor) -> torch.Tensor:
    """Logits by target token id (zero outside the draft vocabulary), whatever the row order."""
    tokens = torch.tensor([[3, 7, 1, 30, 2]])
    with torch.no_grad():
        hidden = model.project_features(features)
        logits = model.logits(model.causal(tokens, hidden, torch.arange(5)[None]))
    return logits.new_zeros(logits.shape[:-1] + (model.config.vocab_size,)).index_copy_(-1, model.draft_ids, logits)


def features_for(model: EagleDraftModel) -> torch.Tensor:
    size = model.config.target_hidden_size * len(model.config.feature_layers)
    return torch.randn(1, 5, size, generator=torch.Generator().manual_seed(5))


def llama_config(model: EagleDraftModel, **extra) -> dict:
    config = model.config
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size, "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads, "num_hidden_layers": 1,
            "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta, "vocab_size": config.vocab_size,
            "max_position_embeddings": 2048, **extra}


def test_specdec_folders_load_back_and_check_the_target_and_tokenizer(tmp_path):
    tiny = target()
    model = randomized(new_draft_model(tiny, style="eagle3", feature_layers=(1, 2, 3),
                                       draft_ids=torch.tensor([31, 5, 0, 9, 2, 17])))
    save_draft(model, tmp_path / "draft", target=tiny, tokenizer=tiny_tokenizer(), name="tiny-0",
               accuracy={"chain": [0.5]})
    loaded = load_draft(str(tmp_path / "draft"), tiny, tiny_tokenizer())
    assert loaded.config == model.config and loaded.draft_ids.tolist() == [31, 5, 0, 9, 2, 17]
    assert torch.allclose(outputs(loaded, features_for(model)), outputs(model, features_for(model)))
    other = tiny_llama(1, vocab_size=32, num_layers=4)
    with pytest.raises(ModelMismatchError, match="trained for tiny-0.*the LM head weights differ"):
        load_draft(str(tmp_path / "draft"), other)
    config = json.loads((tmp_path / "draft" / "config.json").read_text())
    config["tokenizer"] = "0123456789abcdef"
    (tmp_path / "draft" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelMismatchError, match="tokenizer numbers tokens differently"):
        load_draft(str(tmp_path / "draft"), tiny, tiny_tokenizer())


@pytest.mark.parametrize("weights_file", ["pytorch_model.bin", "model.safetensors"])
def test_eagle1_checkpoints_of_the_eagle_authors_load_with_their_key_names(tmp_path, weights_file):
    tiny = target()
    model = randomized(new_draft_model(tiny, style="eagle1"))
    state = {"fc.weight": model.fc.weight, "fc.bias": model.fc.bias,
             "embed_tokens.weight": tiny.get_input_embeddings().weight.detach()}
    layer = model.layer.state_dict()
    state.update({f"layers.0.{key}": layer[key] for key in LAYER_KEYS})
    folder = tmp_path / "eagle1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llama_config(model, bias=True)))
    state = {key: value.detach().clone() for key, value in state.items()}
    if weights_file.endswith(".bin"):
        torch.save(state, folder / weights_file)
    else:
        save_file(state, str(folder / weights_file))
    loaded = load_draft(str(folder), tiny)
    assert loaded.config.style == "eagle1" and loaded.config.feature_layers == (-1,) and loaded.config.fc_bias
    assert torch.allclose(outputs(loaded, features_for(model)), outputs(model, features_for(model)), atol=1e-5)


def eagle3_state(model: EagleDraftModel, prefix: str) -> dict[str, torch.Tensor]:
    layer = model.layer.state_dict()
    keys = LAYER_KEYS + ["input_layernorm.weight", "hidden_norm.weight"]
    state = {f"{prefix}{key}": layer[key] for key in keys}
    ids = model.draft_ids
    t2d = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    t2d[ids] = True
    state.update({"fc.weight": model.fc.weight, "norm.weight": model.norm.weight, "lm_head.weight": model.lm_head.weight,
                  "d2t": ids - torch.arange(len(ids)), "t2d": t2d})
    return {key: value.detach().clone() for key, value in state.items()}


def test_eagle3_checkpoints_in_the_specforge_layout_load_with_their_draft_vocabulary(tmp_path):
    tiny = target()
    model = randomized(new_draft_model(tiny, style="eagle3", feature_layers=(1, 3, 4),
                                       draft_ids=torch.tensor([0, 2, 3, 8, 20, 31])))
    folder = tmp_path / "eagle3"
    folder.mkdir()
    config = llama_config(model, architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=6,
                          eagle_config={"eagle_aux_hidden_state_layer_ids": [0, 2, 3]})
    (folder / "config.json").write_text(json.dumps(config))
    save_file(eagle3_state(model, "midlayer."), str(folder / "model.safetensors"))
    loaded = load_draft(str(folder), tiny)
    assert loaded.config.style == "eagle3" and loaded.config.feature_layers == (1, 3, 4)
    assert loaded.draft_ids.tolist() == [0, 2, 3, 8, 20, 31]
    assert torch.allclose(outputs(loaded, features_for(model)), outputs(model, features_for(model)), atol=1e-5)


def test_eagle3_checkpoints_in_the_speculators_layout_load(tmp_path):
    tiny = target()
    model = randomized(new_draft_model(tiny, style="eagle3", draft_ids=torch.tensor([1, 4, 9, 16, 25])))
    folder = tmp_path / "speculators"
    folder.mkdir()
    layer = llama_config(model)
    config = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
              "transformer_layer_config": layer, "draft_vocab_size": 5, "norm_before_residual": False,
              "target_hidden_size": None, "eagle_aux_hidden_state_layer_ids": None}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(eagle3_state(model, "layers.0."), str(folder / "model.safetensors"))
    loaded = load_draft(str(folder), tiny)
    assert loaded.config.feature_layers == model.config.feature_layers  # the EAGLE authors' default layers
    assert torch.allclose(outputs(loaded, features_for(model)), outputs(model, features_for(model)), atol=1e-5)


def test_export_writes_the_eagle3_layout_and_reads_back_the_same_model(tmp_path):
    tiny = target()
    model = randomized(new_draft_model(tiny, style="eagle3", feature_layers=(1, 2, 3),
                                       draft_ids=torch.tensor([31, 5, 0, 9, 2, 17])))
    folder = export_eagle3(model, tmp_path / "export", target=tiny, dtype=torch.float32)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == 6
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    state = load_file(str(folder / "model.safetensors"))
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d", "midlayer.hidden_norm.weight",
            "midlayer.self_attn.q_proj.weight"} <= set(state)
    assert (torch.arange(6) + state["d2t"]).tolist() == [0, 2, 5, 9, 17, 31]  # by increasing target id
    loaded = load_draft(str(folder), tiny)
    assert torch.allclose(outputs(loaded, features_for(model)), outputs(model, features_for(model)), atol=1e-5)
    with pytest.raises(InputError, match="only eagle3-style"):
        export_eagle3(new_draft_model(tiny, style="eagle1"), tmp_path / "no", target=tiny)


def test_a_checkpoint_for_another_hidden_size_names_both_sizes(tmp_path):
    tiny, wide = target(), tiny_llama(0, vocab_size=32, hidden_size=48, num_layers=4)
    model = new_draft_model(wide, style="eagle1")
    folder = tmp_path / "wide"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(llama_config(model)))
    layer = model.layer.state_dict()
    state = {"fc.weight": model.fc.weight, "fc.bias": model.fc.bias,
             **{f"layers.0.{key}": layer[key] for key in LAYER_KEYS}}
    save_file({key: value.detach().clone() for key, value in state.items()}, str(folder / "model.safetensors"))
    with pytest.raises(ModelMismatchError, match="hidden size 48, but this target's hidden size is 32"):
        load_draft(str(folder), tiny)


def test_damaged_checkpoints_are_input_errors(tmp_path):
    tiny = target()
    folder = tmp_path / "broken"
    folder.mkdir()
    model = new_draft_model(tiny, style="eagle1")
    (folder / "config.json").write_text(json.dumps(llama_config(model)))
    with pytest.raises(InputError, match="no weights"):
        load_draft(str(folder), tiny)
    save_file({"fc.weight": model.fc.weight.detach().clone()}, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="do not match the config.*missing"):
        load_draft(str(folder), tiny)
    with pytest.raises(InputError, match="not a shipped name"):
        load_draft(str(tmp_path / "nowhere"), tiny)


def test_the_shipped_draft_model_is_refused_for_another_target():
    with pytest.raises(ModelMismatchError, match="trained for SmolLM2-135M-Instruct.*eagle train --model"):
        load_draft("default", target())


@pytest.mark.slow
def test_the_shipped_draft_model_drafts_for_the_default_model_losslessly():
    from specdec import Pipeline

    greedy = {"sampling": {"temperature": 0, "max_new_tokens": 48}}
    messages = [{"role": "user", "content": "Name three uses of copper and explain one."}]
    plain = Pipeline.from_dict(greedy).generate(messages)
    eagle = Pipeline.from_dict({**greedy, "drafter": {"type": "eagle", "params": {"draft_vocab": 4096, "node_cost": 0.0}}})
    result = eagle.generate(messages)
    assert result.token_ids == plain.token_ids
    assert result.stats.new_tokens / result.stats.steps > 1.2
