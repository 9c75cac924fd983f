"""The self-distillation prompt set shipped with this plugin (the text readers and the
distillation itself live in `specdec.training_data`, shared with other trained drafters)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import specdec

#: The shipped self-distillation prompt set: generic chat instructions written for this plugin.
PROMPTS_FILE = "prompts.jsonl"


def shipped_prompts_path() -> Path:
    return Path(str(resources.files("specdec_plugin_medusa") / "data" / PROMPTS_FILE))


def load_prompts(path: str | Path | None = None) -> list[list[dict]]:
    """Conversations of a prompt file (formats: `specdec.read_chat_prompts`); the shipped set by default."""
    return specdec.read_chat_prompts(shipped_prompts_path() if path is None else path)
