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

from specdec import InputError, ModelMismatchError, signature_differences, target_signature

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "heads.safetensors"
FORMAT = "specdec-medusa-heads"
FORMAT_VERSION = 1
# Far beyond any trained set (Medusa uses 4-5 heads of 1 layer); a config asking for more is
# damaged, and building it would allocate without bound.
MAX_HEADS = 64
MAX_LAYERS = 64
_RETRAIN = "train the heads again with `specdec medusa train`, or restore the folder from where you got it"


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
    def from_json(cls, data: Any, source: str) -> "HeadsConfig":
        """Check a parsed `config.json` field by field: a damaged or hand-edited file is an
        InputError naming `source`, never a TypeError deep inside building the heads."""
        if not isinstance(data, dict):
            raise InputError(f"{source} must hold a JSON object (a Medusa heads config), not "
                             f"{type(data).__name__}; {_RETRAIN}")
        if data.get("format") != FORMAT:
            raise InputError(f"{source} is not a Medusa heads config (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{source} has heads format version {data.get('format_version')!r}; this "
                             f"plugin reads version {FORMAT_VERSION}")
        problems = []
        for name, top in (("num_heads", MAX_HEADS), ("num_layers", MAX_LAYERS), ("hidden_size", None),
                          ("vocab_size", None)):
            value = data.get(name)
            if not _is_int(value) or value < 1 or (top is not None and value > top):
                bound = f"from 1 to {top}" if top else ">= 1"
                problems.append(f"{name} must be an integer {bound}, got {value!r}")
        for name, kind in (("own_lm_head", bool), ("target", dict), ("accuracy", dict), ("training", dict)):
            value = data.get(name)
            if value is not None and not isinstance(value, kind):
                problems.append(f"{name} must be a JSON {'boolean' if kind is bool else 'object'}, got {value!r:.60}")
        target = data.get("target") or {}
        for name in ("lm_head_probe", "embedding_probe"):
            if name in target and not _is_probe(target[name]):
                problems.append(f"target.{name} must be an object with a list of numbers 'values' and a "
                                f"number 'spread'")
        if problems:
            raise InputError(f"{source}: malformed heads config: {'; '.join(problems)}; {_RETRAIN}")
        config = cls(**{name: data[name] for name in cls.__dataclass_fields__ if data.get(name) is not None})
        config._check_tree(source)
        config._check_accuracy(source)
        return config

    def _check_tree(self, source: str) -> None:
        from specdec_plugin_medusa.trees import check_paths

        if self.tree is None:
            return
        fix = "fix or remove 'tree' (then a tree is derived from the measured accuracy)"
        if not (isinstance(self.tree, list) and all(isinstance(path, list) and all(map(_is_int, path))
                                                    for path in self.tree)):
            raise InputError(f"{source}: the recommended tree must be a list of paths of integer ranks, "
                             f"e.g. [[0], [1], [0, 0]]; {fix}")
        try:
            check_paths(self.tree, num_heads=self.num_heads)
        except ValueError as error:
            raise InputError(f"{source}: the recommended tree is invalid: {error}; {fix}") from None
        too_high = [path for path in self.tree if path and max(path) >= self.vocab_size]
        if too_high:
            raise InputError(f"{source}: the recommended tree's path {too_high[0]} asks for a rank beyond the "
                             f"{self.vocab_size}-token vocabulary; {fix}")

    def _check_accuracy(self, source: str) -> None:
        per_rank = (self.accuracy or {}).get("per_rank")
        if per_rank is None:
            return
        valid = isinstance(per_rank, list) and 0 < len(per_rank) <= self.num_heads and all(
            isinstance(row, list) and 0 < len(row) <= self.vocab_size
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
                    for value in row)
            for row in per_rank)
        if not valid:
            raise InputError(f"{source}: accuracy.per_rank must list, for each of at most {self.num_heads} "
                             f"heads, the probabilities (0 to 1) of its ranks; measure them again with "
                             f"`specdec medusa train` or remove 'accuracy'")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_probe(probe: Any) -> bool:
    """What `specdec.fingerprint.same_probe` compares: {"values": [numbers], "spread": number}."""
    return (isinstance(probe, dict) and isinstance(probe.get("values"), list)
            and all(map(_is_number, probe["values"])) and _is_number(probe.get("spread", 0.0)))


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


def check_target(config: HeadsConfig, model, heads_name: str) -> None:
    """Refuse heads trained for another model, saying what differs and what to do."""
    expected = config.target
    actual = target_signature(model)
    problems = signature_differences(expected, actual)
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
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if getattr(model, "specdec_tp", None) is not None:
        raise ModelMismatchError("Medusa heads project through the target's LM head weight, which a tensor-parallel "
                                 "target splits across ranks; use another drafter (prompt_lookup, token_recycling, "
                                 "draft_model) or target.tp_size 1")
    folder = resolve_heads(name_or_path)
    config = read_config(folder)
    if check:
        check_target(config, model, name_or_path)
    lm_head = model.get_output_embeddings().weight
    heads = MedusaHeads(config, None if config.own_lm_head else lm_head)
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as error:
        raise InputError(f"cannot read Medusa head weights {weights}: {error}; {_RETRAIN}") from None
    expected = heads.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{name} is {state[name].dtype}{list(state[name].shape)}, expected {list(expected[name].shape)}"
             for name in expected if name in state and (state[name].shape != expected[name].shape
                                                         or not state[name].is_floating_point())]
    if missing or unexpected or wrong:
        raise InputError(f"{weights} does not match {folder / CONFIG_FILE} (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, wrong shape or type {wrong[:3]}); {_RETRAIN}")
    heads.load_state_dict(state)
    return heads.to(device=lm_head.device, dtype=lm_head.dtype).eval().requires_grad_(False)
