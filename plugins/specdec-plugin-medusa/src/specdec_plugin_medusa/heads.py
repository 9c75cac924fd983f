"""Medusa heads: the module, its files, and the check that they fit the target model.

Head k (0-based) reads the target's final normed hidden state at position t (what the LM head
reads) and predicts the token at t + k + 2; the target's own LM head predicts t + 1. A head is
`num_layers` residual blocks `x + SiLU(W x + b)` (zero-initialised, so every block starts as the
identity and a fresh head predicts what the LM head predicts) followed by a vocabulary
projection: either the target's frozen LM head (shared by all heads, nothing to store) or the
head's own `Linear(hidden, vocab)`, initialised from the target's.

On disk a heads folder holds `config.json` (shapes, the target they were trained for, measured
accuracy, the recommended tree, how they were trained) and `heads.safetensors`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from specdec import InputError, ModelMismatchError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "heads.safetensors"
FORMAT = "specdec-medusa-heads"
FORMAT_VERSION = 1
_PROBE_SIZE = 256
# Probe values may differ by this fraction of the weights' spread: loose enough for the same
# weights in float16/bfloat16, far tighter than the gap to another model or quantization.
_PROBE_TOLERANCE = 0.02


@dataclass
class HeadsConfig:
    """Everything `config.json` records. `target` is a `target_signature`."""

    num_heads: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    own_lm_head: bool = False
    target: dict[str, Any] = field(default_factory=dict)
    tree: list[list[int]] | None = None  # recommended tree (paths of ranks), None = derive one
    accuracy: dict[str, Any] | None = None  # held-out accuracy (see specdec_plugin_medusa.train)
    training: dict[str, Any] | None = None  # how the heads were trained

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict, source: str) -> "HeadsConfig":
        if data.get("format") != FORMAT:
            raise InputError(f"{source} is not a Medusa heads config (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{source} has heads format version {data.get('format_version')}; this "
                             f"plugin reads version {FORMAT_VERSION}")
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        try:
            return cls(**fields)
        except TypeError as error:
            raise InputError(f"{source}: malformed heads config: {error}") from None


class ResBlock(nn.Module):
    """`x + SiLU(W x + b)`, zero-initialised: the identity until trained."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + F.silu(self.linear(hidden))


class MedusaHeads(nn.Module):
    """`num_heads` heads over the target's final hidden state.

    :param config: shapes and options.
    :param lm_head_weight: `[V, H]` the target's LM head weight: the shared frozen projection
        (when `own_lm_head` is False) or the initial value of each head's own projection.
    """

    def __init__(self, config: HeadsConfig, lm_head_weight: torch.Tensor | None = None):
        super().__init__()
        if config.num_heads < 1 or config.num_layers < 1:
            raise ValueError("Medusa heads need num_heads >= 1 and num_layers >= 1")
        self.config = config
        hidden, vocab = config.hidden_size, config.vocab_size
        # one Sequential per head, each block built anew: no weights shared between blocks
        self.blocks = nn.ModuleList([
            nn.Sequential(*[ResBlock(hidden) for _ in range(config.num_layers)]) for _ in range(config.num_heads)])
        if lm_head_weight is not None and tuple(lm_head_weight.shape) != (vocab, hidden):
            raise ModelMismatchError(f"the LM head weight has shape {tuple(lm_head_weight.shape)}, "
                                     f"the heads expect [{vocab}, {hidden}]")
        if config.own_lm_head:
            self.lm_heads = nn.ModuleList([nn.Linear(hidden, vocab, bias=False) for _ in range(config.num_heads)])
            if lm_head_weight is not None:
                with torch.no_grad():
                    for projection in self.lm_heads:
                        projection.weight.copy_(lm_head_weight)
            self.shared_lm_head = None
        else:
            if lm_head_weight is None:
                raise ValueError("heads without their own LM head need the target's lm_head_weight")
            self.lm_heads = None
            # the target's weight itself, frozen and not saved with the heads
            self.register_buffer("shared_lm_head", lm_head_weight.detach(), persistent=False)

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    def hidden(self, states: torch.Tensor, num_heads: int | None = None) -> torch.Tensor:
        """`states` `[..., H]` -> `[K, ..., H]` each head's input to its vocabulary projection."""
        count = self.num_heads if num_heads is None else num_heads
        return torch.stack([self.blocks[head](states) for head in range(count)])

    def forward(self, states: torch.Tensor, num_heads: int | None = None) -> torch.Tensor:
        """`states` `[..., H]` -> logits `[K, ..., V]` of the first `num_heads` heads."""
        hidden = self.hidden(states, num_heads)
        if self.shared_lm_head is not None:
            return hidden @ self.shared_lm_head.to(hidden.dtype).T  # one matmul for all heads
        return torch.stack([self.lm_heads[head](hidden[head]) for head in range(hidden.shape[0])])


# -- the target a set of heads belongs to -----------------------------------------------------------


def target_signature(model, name: str | None = None) -> dict[str, Any]:
    """What identifies the target model: architecture, sizes and probes of its LM head and
    input embedding weights (256 values at fixed pseudo-random places, plus their spread)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    lm_head = model.get_output_embeddings().weight
    embedding = model.get_input_embeddings().weight
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    return {
        "name": name or getattr(model.config, "_name_or_path", "") or "",
        "architecture": architectures[0],
        "model_type": getattr(config, "model_type", ""),
        "hidden_size": int(lm_head.shape[1]),
        "vocab_size": int(lm_head.shape[0]),
        "num_hidden_layers": int(getattr(config, "num_hidden_layers", 0)),
        "tied_embeddings": bool(lm_head.data_ptr() == embedding.data_ptr()),
        "lm_head_probe": _probe(lm_head),
        "embedding_probe": _probe(embedding),
    }


def _probe(weight: torch.Tensor) -> dict[str, Any]:
    rows, columns = weight.shape
    generator = torch.Generator().manual_seed(rows * 1_000_003 + columns)
    row_index = torch.randint(rows, (_PROBE_SIZE,), generator=generator)
    column_index = torch.randint(columns, (_PROBE_SIZE,), generator=generator)
    with torch.no_grad():
        values = weight.detach()[row_index.to(weight.device), column_index.to(weight.device)].float().cpu()
        spread = float(weight.detach()[row_index.to(weight.device)].float().std())
    return {"values": [round(value, 6) for value in values.tolist()], "spread": round(spread, 6)}


def check_target(config: HeadsConfig, model, heads_name: str) -> None:
    """Refuse heads trained for another model, saying what differs and what to do."""
    expected = config.target
    actual = target_signature(model)
    problems = []
    for key, label in (("architecture", "architecture"), ("hidden_size", "hidden size"),
                       ("vocab_size", "vocabulary size"), ("num_hidden_layers", "layers")):
        if key in expected and expected[key] != actual[key]:
            problems.append(f"{label} {expected[key]} vs {actual[key]}")
    if not problems:
        for key, label in (("lm_head_probe", "LM head"), ("embedding_probe", "input embedding")):
            if key in expected and not _same_probe(expected[key], actual[key]):
                problems.append(f"the {label} weights differ")
    if problems:
        trained_for = expected.get("name") or expected.get("architecture", "another model")
        raise ModelMismatchError(
            f"Medusa heads '{heads_name}' were trained for {trained_for} "
            f"({expected.get('architecture')}, hidden {expected.get('hidden_size')}, vocab "
            f"{expected.get('vocab_size')}) and do not fit this target ({actual['architecture']}, hidden "
            f"{actual['hidden_size']}, vocab {actual['vocab_size']}): {'; '.join(problems)}. Heads only "
            f"work on the model they were trained on; train heads for this one with "
            f"`specdec medusa train --model <target>`")
    if config.hidden_size != actual["hidden_size"] or config.vocab_size != actual["vocab_size"]:
        raise ModelMismatchError(f"Medusa heads '{heads_name}' have hidden size {config.hidden_size} and "
                                 f"vocabulary {config.vocab_size}; the target has {actual['hidden_size']} "
                                 f"and {actual['vocab_size']}")


def _same_probe(expected: dict, actual: dict) -> bool:
    left, right = torch.tensor(expected["values"]), torch.tensor(actual["values"])
    if left.shape != right.shape:
        return False
    scale = max(float(expected.get("spread", 0.0)), 1e-8)
    return bool(((left - right).abs() <= _PROBE_TOLERANCE * scale + 1e-6).all())


# -- files ------------------------------------------------------------------------------------------


def shipped_heads() -> dict[str, Path]:
    """Heads shipped inside this package, by name (each a folder under `heads/`)."""
    root = Path(str(resources.files("specdec_plugin_medusa") / "heads"))
    if not root.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(root.iterdir()) if (folder / CONFIG_FILE).is_file()}


def resolve_heads(name_or_path: str) -> Path:
    """The folder of shipped heads `name`, or a folder path holding `config.json`."""
    shipped = shipped_heads()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path
    names = ", ".join(shipped) or "none"
    raise InputError(f"no Medusa heads '{name_or_path}': not a shipped name (shipped: {names}) and not a "
                     f"folder with {CONFIG_FILE} and {WEIGHTS_FILE}")


def read_config(folder: str | Path) -> HeadsConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the Medusa heads config {path}: {error}") from None
    return HeadsConfig.from_json(data, str(path))


def save_heads(heads: MedusaHeads, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `config.json` and `heads.safetensors` (the shared LM head is not stored)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in heads.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    (folder / CONFIG_FILE).write_text(json.dumps(heads.config.to_json(), indent=1) + "\n", encoding="utf-8")
    return folder


def load_heads(name_or_path: str, model, *, check: bool = True) -> MedusaHeads:
    """Load heads for `model` (checked against the target they were trained for), on the
    model's device and dtype."""
    from safetensors.torch import load_file

    folder = resolve_heads(name_or_path)
    config = read_config(folder)
    if check:
        check_target(config, model, name_or_path)
    lm_head = model.get_output_embeddings().weight
    heads = MedusaHeads(config, None if config.own_lm_head else lm_head)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read Medusa head weights {folder / WEIGHTS_FILE}: {error}") from None
    missing, unexpected = heads.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{folder / WEIGHTS_FILE} does not match its config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return heads.to(device=lm_head.device, dtype=lm_head.dtype).eval().requires_grad_(False)
