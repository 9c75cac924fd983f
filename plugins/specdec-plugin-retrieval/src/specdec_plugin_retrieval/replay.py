"""Greedy answers of a chat corpus, to replay through drafters without running the model.

`specdec.testing.replay_greedy` replays one (prompt, greedy output) pair through a drafter: exact
steps and accepted tokens, and a speedup modeled by a cost model. `benchmarks/replay.py` runs it
over a JSONL of chats (for example a self-distilled corpus) for pipeline files, and
`benchmarks/fit_priors.py` fits the retrieval drafters' priors with it.
"""

from __future__ import annotations

from specdec import read_json_lines


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
