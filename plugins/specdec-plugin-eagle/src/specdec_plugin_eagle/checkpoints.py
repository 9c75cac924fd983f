"""Draft model files: specdec's own folders, published EAGLE checkpoints, and export.

Layouts read (`load_draft` tells them apart by `config.json`):

- `specdec`: what `specdec eagle train` writes: `config.json` (`"format": "specdec-eagle"`, the
  model's `EagleConfig`, the target's signature and tokenizer fingerprint, held-out accuracy, how
  it was trained) and `model.safetensors`. Refused for any other target.
- `eagle1`: the EAGLE authors' EAGLE-1/2 checkpoints (SafeAILab/EAGLE): a Llama `config.json` of
  one layer (`"bias"`: whether `fc` has one, default true) and `pytorch_model.bin` or
  `model.safetensors` with keys `fc.*`, `layers.0.self_attn.*`, `layers.0.mlp.*`,
  `layers.0.post_attention_layernorm.weight` (no input norm), and optionally `embed_tokens.weight`.
- `eagle3`: EAGLE-3 drafts as the EAGLE authors and SGLang's SpecForge write them: a Llama
  `config.json` with `"architectures": ["LlamaForCausalLMEagle3"]`, `draft_vocab_size`, optionally
  `target_hidden_size` and `eagle_config.eagle_aux_hidden_state_layer_ids`; keys `midlayer.*`
  (attention over twice the hidden size, `hidden_norm`, `input_layernorm`), `fc.weight` (three
  target layers to one), `norm.weight`, `lm_head.weight` over the draft vocabulary, `d2t` (draft
  row -> target id offset: id = row + d2t[row]) and `t2d` (target ids in the draft vocabulary).
- `speculators`: vLLM's speculators format of the same model: `"speculators_model_type":
  "eagle3"`, the layer's settings in `transformer_layer_config`, keys `layers.0.*` instead of
  `midlayer.*`.

Which target layers an EAGLE-3 draft reads: `eagle_aux_hidden_state_layer_ids` count decoder
layers whose *output* is read (SGLang's convention), i.e. `hidden_states` index id + 1; without
them, indices 2, L // 2 and L - 3 (the EAGLE authors' choice). `.bin` files load with
`weights_only=True` (no code runs).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from specdec import (
    InputError, ModelMismatchError, signature_differences, target_signature, tokenizer_fingerprint
)

from specdec_plugin_eagle.build import FINAL_FEATURE, default_feature_layers, text_config
from specdec_plugin_eagle.model import EagleConfig, EagleDraftModel

FORMAT = "specdec-eagle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"
_RETRAIN = "train a draft model for this target with `specdec eagle train --model <target>`"


# -- finding and reading files ----------------------------------------------------------------------


def shipped_weights() -> dict[str, Path]:
    """Draft models shipped inside this package, by name (each a folder under `weights/`)."""
    root = Path(str(resources.files("specdec_plugin_eagle") / "weights"))
    if not root.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(root.iterdir()) if (folder / CONFIG_FILE).is_file()}


def resolve_weights(name_or_path: str) -> Path:
    shipped = shipped_weights()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path
    raise InputError(f"no EAGLE draft model '{name_or_path}': not a shipped name (shipped: "
                     f"{', '.join(shipped) or 'none'}) and not a folder with {CONFIG_FILE} and weights "
                     f"({WEIGHTS_FILE} or {BIN_FILE})")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    return data


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """`model.safetensors`, else `pytorch_model.bin` (loaded with weights_only=True)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    try:
        if path.is_file():
            return load_file(str(path))
        path = folder / BIN_FILE
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("not a state dict")
            return state
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise InputError(f"cannot read the draft model weights {path}: {error}") from None
    raise InputError(f"{folder} holds {CONFIG_FILE} but no weights ({WEIGHTS_FILE} or {BIN_FILE})")


def detect_layout(config: dict[str, Any]) -> str:
    if config.get("format") == FORMAT:
        return "specdec"
    if config.get("speculators_model_type") is not None:
        return "speculators"
    architectures = config.get("architectures") or []
    if any("Eagle3" in str(name) for name in architectures) or "draft_vocab_size" in config:
        return "eagle3"
    return "eagle1"


# -- loading ---------------------------------------------------------------------------------------


def load_draft(name_or_path: str, target, tokenizer=None, *, check: bool = True) -> EagleDraftModel:
    """The draft model of a folder in any layout above, for `target` (on CPU, float32; see
    `build.attach`). Sizes are checked against the target; specdec folders also against the
    target and tokenizer they were trained for."""
    folder = resolve_weights(name_or_path)
    config = read_json(folder / CONFIG_FILE)
    layout = detect_layout(config)
    state = read_weights(folder)
    if layout == "specdec":
        return _load_specdec(folder, config, state, target, tokenizer, name_or_path, check)
    if layout == "eagle1":
        return _load_eagle1(folder, config, state, target)
    if layout == "speculators":
        layer = config.get("transformer_layer_config")
        if not isinstance(layer, dict):
            raise InputError(f"{folder / CONFIG_FILE}: a speculators config needs a 'transformer_layer_config' object")
        if config.get("speculators_model_type") != "eagle3":
            raise InputError(f"{folder / CONFIG_FILE}: speculators model type "
                             f"{config.get('speculators_model_type')!r} is not supported (only 'eagle3')")
        for flag in ("norm_before_fc", "fc_norm"):
            if config.get(flag):
                raise InputError(f"{folder / CONFIG_FILE}: '{flag}: true' drafts are not supported yet")
        merged = {**layer, **{key: config[key] for key in ("draft_vocab_size", "target_hidden_size",
                                                           "norm_before_residual") if config.get(key) is not None}}
        merged["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": config.get("eagle_aux_hidden_state_layer_ids")}
        return _load_eagle3(folder, merged, state, target)
    for flag in ("fc_norm",):
        if config.get(flag):
            raise InputError(f"{folder / CONFIG_FILE}: '{flag}: true' drafts are not supported yet")
    return _load_eagle3(folder, config, state, target)


def _load_specdec(folder: Path, config: dict, state: dict, target, tokenizer, name: str, check: bool) -> EagleDraftModel:
    source = folder / CONFIG_FILE
    if config.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{source} has format version {config.get('format_version')!r}; this plugin reads "
                         f"version {FORMAT_VERSION}")
    try:
        model_config = EagleConfig.from_json(config["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{source}: malformed draft model config ({error}); {_RETRAIN}") from None
    if check:
        expected = config.get("target") or {}
        problems = signature_differences(expected, target_signature(target))
        recorded = config.get("tokenizer")
        if not problems and tokenizer is not None and recorded and recorded != tokenizer_fingerprint(tokenizer):
            problems.append("the tokenizer numbers tokens differently")
        if problems:
            trained_for = expected.get("name") or expected.get("architecture", "another model")
            raise ModelMismatchError(
                f"EAGLE draft model '{name}' was trained for {trained_for} ({expected.get('architecture')}, "
                f"hidden {expected.get('hidden_size')}, vocab {expected.get('vocab_size')}) and does not fit this "
                f"target: {'; '.join(problems)}. A draft model only works on the model it was trained on; {_RETRAIN}")
    _check_sizes(model_config.target_hidden_size, model_config.vocab_size, target, name)
    model = _empty_model(model_config, target, state.get("draft_ids"))
    _load_state(model, state, folder)
    model.accuracy = config.get("accuracy")
    return model


def _load_eagle1(folder: Path, config: dict, state: dict, target) -> EagleDraftModel:
    state = {key.replace("layers.0.", "layer.", 1) if key.startswith("layers.0.") else key: value
             for key, value in state.items()}
    if any(key.startswith("layers.") for key in state):
        raise InputError(f"{folder}: the EAGLE-1 checkpoint has more than one decoder layer; specdec drafts with one")
    model_config = _llama_config(config, folder, style="eagle1", feature_layers=(FINAL_FEATURE,),
                                 fc_bias=bool(config.get("bias", True)) and "fc.bias" in state)
    _check_sizes(model_config.hidden_size, model_config.vocab_size, target, str(folder))
    model = _empty_model(model_config, target, None, state.pop("embed_tokens.weight", None))
    _load_state(model, state, folder)
    return model


def _load_eagle3(folder: Path, config: dict, state: dict, target) -> EagleDraftModel:
    state = {("layer." + key.split(".", 1)[1]) if key.startswith("midlayer.") else
             key.replace("layers.0.", "layer.", 1) if key.startswith("layers.0.") else key: value
             for key, value in state.items()}
    layers = int(text_config(target).num_hidden_layers)
    ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if ids is None:
        feature_layers = default_feature_layers(target, "eagle3")
    else:
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) and 0 <= i < layers for i in ids)):
            raise InputError(f"{folder / CONFIG_FILE}: eagle_aux_hidden_state_layer_ids must list layers of the "
                             f"{layers}-layer target, got {ids!r}")
        feature_layers = tuple(index + 1 for index in ids)
    model_config = _llama_config(config, folder, style="eagle3", feature_layers=feature_layers, fc_bias=False)
    _check_sizes(model_config.target_hidden_size, model_config.vocab_size, target, str(folder))
    d2t, t2d = state.pop("d2t", None), state.pop("t2d", None)
    size = model_config.draft_vocab_size
    if d2t is not None:
        if tuple(d2t.shape) != (size,):
            raise InputError(f"{folder}: d2t has shape {tuple(d2t.shape)}, the config's draft_vocab_size is {size}")
        draft_ids = torch.arange(size) + d2t.to(torch.long)
    elif size == model_config.vocab_size:
        draft_ids = torch.arange(size)
    else:
        raise InputError(f"{folder}: the draft vocabulary ({size} tokens) is smaller than the target's "
                         f"({model_config.vocab_size}) but the checkpoint has no d2t map")
    if t2d is not None and int(t2d.to(torch.bool).sum()) != size:
        raise InputError(f"{folder}: t2d marks {int(t2d.to(torch.bool).sum())} tokens, d2t maps {size}")
    model = _empty_model(model_config, target, draft_ids, state.pop("embed_tokens.weight", None))
    _load_state(model, state, folder)
    return model


def _llama_config(config: dict, folder: Path, *, style: str, feature_layers, fc_bias: bool) -> EagleConfig:
    source = folder / CONFIG_FILE
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        vocab = int(config["vocab_size"])
        return EagleConfig(
            style=style, hidden_size=hidden, intermediate_size=int(config["intermediate_size"]),
            num_attention_heads=heads, num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads), vocab_size=vocab,
            target_hidden_size=int(config.get("target_hidden_size") or hidden), feature_layers=tuple(feature_layers),
            draft_vocab_size=int(config.get("draft_vocab_size") or vocab),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=float(config.get("rope_theta", 10000.0)),
            rope_scaling=config.get("rope_scaling"),
            max_position_embeddings=int(config.get("max_position_embeddings", 8192)), fc_bias=fc_bias,
            attention_bias=bool(config.get("attention_bias", False)),
            norm_before_residual=bool(config.get("norm_before_residual", False)))
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{source}: not a usable draft model config ({type(error).__name__}: {error})") from None


def _check_sizes(hidden: int, vocab: int, target, name: str) -> None:
    lm_head = target.get_output_embeddings().weight
    target_vocab, target_hidden = (int(size) for size in lm_head.shape)
    if hidden != target_hidden:
        raise ModelMismatchError(f"EAGLE draft model '{name}' reads target features of hidden size {hidden}, but "
                                 f"this target's hidden size is {target_hidden}: it was made for another model")
    if vocab != target_vocab:
        raise ModelMismatchError(f"EAGLE draft model '{name}' has a {vocab}-token vocabulary, this target "
                                 f"{target_vocab}: it was made for another model")


def _empty_model(config: EagleConfig, target, draft_ids, embedding=None) -> EagleDraftModel:
    lm_head = target.get_output_embeddings().weight.detach().float().cpu()
    if embedding is None or tuple(embedding.shape) != (config.vocab_size, config.hidden_size):
        embedding = target.get_input_embeddings().weight
    ids = torch.arange(config.draft_vocab_size) if draft_ids is None else draft_ids.to(torch.long)
    return EagleDraftModel(config, embedding.detach().float().cpu(), ids,
                           lm_head if config.style == "eagle1" else None)


def _load_state(model: EagleDraftModel, state: dict[str, torch.Tensor], folder: Path) -> None:
    expected = model.state_dict()
    state = {"draft_ids": model.draft_ids, **state}  # published layouts keep the vocabulary map apart
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{key} {list(state[key].shape)} (expected {list(expected[key].shape)})"
             for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or wrong:
        raise InputError(f"{folder}: the weights do not match the config (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}, wrong shape {wrong[:3]})")
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in state.items()})


# -- writing -----------------------------------------------------------------------------------------


def save_draft(model: EagleDraftModel, folder: str | Path, *, target, tokenizer=None, name: str | None = None,
               accuracy: dict | None = None, training: dict | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """A specdec folder: `config.json` + `model.safetensors` (shared target weights not stored;
    floating-point weights in `dtype`, loaded back in the target's)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config.to_json(),
              "target": target_signature(target, name),
              "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
              "accuracy": accuracy, "training": training}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return folder


def export_eagle3(model: EagleDraftModel, folder: str | Path, *, target, dtype: torch.dtype = torch.float16) -> Path:
    """Write an `eagle3`-style model in the EAGLE-3 layout of the EAGLE authors and SpecForge
    (`midlayer.*`, `d2t`/`t2d`, `LlamaForCausalLMEagle3`), which vLLM and SGLang read."""
    from safetensors.torch import save_file

    config = model.config
    if config.style != "eagle3":
        raise InputError("only eagle3-style draft models have an EAGLE-3 layout; this one is eagle1 "
                         "(train one with `specdec eagle train --style eagle3`)")
    layers = int(text_config(target).num_hidden_layers)
    if any(index < 1 or index > layers - 1 for index in config.feature_layers):
        raise InputError(f"the EAGLE-3 layout names decoder layers whose output the draft reads; features "
                         f"{list(config.feature_layers)} include the embedding or the final normed state")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    order = torch.argsort(model.draft_ids.cpu())  # d2t lists draft rows by increasing target id
    ids = model.draft_ids.cpu()[order]
    state = {}
    for key, value in model.state_dict().items():
        if key == "draft_ids":
            continue
        if key == "lm_head.weight":
            value = value.cpu()[order]
        name = "midlayer." + key.removeprefix("layer.") if key.startswith("layer.") else key
        state[name] = value.detach().to("cpu", dtype).contiguous()
    state["d2t"] = (ids - torch.arange(len(ids))).contiguous()
    t2d = torch.zeros(config.vocab_size, dtype=torch.bool)
    t2d[ids] = True
    state["t2d"] = t2d
    state["embed_tokens.weight"] = model.embedding.detach().to("cpu", dtype).contiguous()
    save_file(state, str(folder / WEIGHTS_FILE))
    target_config = text_config(target)
    written = {
        "architectures": [EAGLE3_ARCHITECTURE], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim, "num_hidden_layers": 1, "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling,
        "max_position_embeddings": config.max_position_embeddings, "vocab_size": config.vocab_size,
        "draft_vocab_size": config.draft_vocab_size, "target_hidden_size": config.target_hidden_size,
        "tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": getattr(target_config, "bos_token_id", None),
        "eos_token_id": getattr(target_config, "eos_token_id", None),
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [index - 1 for index in config.feature_layers],
                         "use_aux_hidden_state": True},
    }
    (folder / CONFIG_FILE).write_text(json.dumps(written, indent=1) + "\n", encoding="utf-8")
    return folder
