"""Replay greedy generations through a drafter without running the model.

Under greedy decoding everything a speculative run does is fixed by the plain output: a draft
node is accepted exactly when its path matches the output. So given (prompt, greedy output)
pairs, this replays the engine's loop (propose, accept the longest matching path, commit it plus
the target's token, observe) and reports exact steps and mean accepted tokens, plus a *modeled*
speedup from the cost model: plain decoding costs one unit per token, a step with m draft nodes
`cost.step_cost(m)` units. Timing-free, so it is reliable on a busy machine;
wall-clock checks go through `specdec bench`.

`benchmarks/replay.py` runs it over a JSONL of chats (for example a self-distilled corpus) for
pipeline files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from specdec import Draft, DraftContext, Drafter, SamplingParams, StepOutcome, read_json_lines
from specdec_plugin_retrieval.adaptive import CostModel


@dataclass
class ReplayStats:
    tokens: int = 0
    steps: int = 0
    draft_nodes: int = 0
    drafted_steps: int = 0
    cost: float = 0.0  # in plain-step units

    @property
    def mean_accepted_tokens(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def modeled_speedup(self) -> float:
        return self.tokens / self.cost if self.cost else 0.0

    def add(self, other: "ReplayStats") -> None:
        for name in ("tokens", "steps", "draft_nodes", "drafted_steps", "cost"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def line(self) -> str:
        return (f"mean accepted {self.mean_accepted_tokens:.2f}, modeled speedup {self.modeled_speedup:.2f}x, "
                f"drafted {self.drafted_steps}/{self.steps} steps, {self.draft_nodes / max(self.steps, 1):.1f} "
                f"nodes/step")


def replay(drafter: Drafter, prompt: Sequence[int], output: Sequence[int], cost: CostModel) -> ReplayStats:
    """Replay one greedy generation (`output` = the plain greedy tokens after `prompt`)."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max(len(output), 1))
    stats = ReplayStats()
    tokens = list(prompt)
    drafter.start(prompt, params)
    step = 0
    while len(tokens) - len(prompt) < len(output):
        done = len(tokens) - len(prompt)
        remaining = len(output) - done
        draft = Draft.empty()
        if remaining > 1:
            draft = drafter.propose(DraftContext(tokens, len(prompt), params, remaining - 1, None, step))
            draft = draft.truncated(remaining - 1) if draft.num_nodes else draft
        path: list[int] = []
        row = 0
        while True:
            expected = output[done + len(path)] if done + len(path) < len(output) else None
            child = next((node for node in draft.children[row] if int(draft.tokens[node]) == expected), None)
            if child is None:
                break
            path.append(child)
            row = child + 1
        accepted = tuple(int(draft.tokens[node]) for node in path)
        next_token = output[done + len(path)]
        tokens.extend(accepted + (next_token,))
        stats.steps += 1
        stats.tokens += len(path) + 1
        stats.draft_nodes += draft.num_nodes
        stats.drafted_steps += draft.num_nodes > 0
        stats.cost += cost.step_cost(draft.num_nodes)
        if len(tokens) - len(prompt) < len(output):
            drafter.observe(StepOutcome(draft, tuple(path), accepted, next_token, tokens))
        step += 1
    return stats


def load_conversations(path: str, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids through the chat template, answer ids + end of turn) per chat record."""
    pairs = []
    for _, record in read_json_lines(path):
        messages = record["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        pairs.append((prompt_ids, answer_ids + [tokenizer.eos_token_id]))
    return pairs
