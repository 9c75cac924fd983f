"""Build a datastore from the model's own answers: useful REST drafts without any download.

The model answers a prompt set (greedy, batched, through its chat template); the conversations
are appended to a JSONL corpus as they finish (a rerun resumes where it stopped) and the store is
built from that corpus. A greedy model repeats its own phrasings (openings, list scaffolding,
code idioms, closing lines), which is what REST needs to draft well for that same model.

The package ships a prompt set of generic chat instructions (writing, coding, math, explanations,
summaries, extraction, advice, translation) written for this purpose: `default_prompts_path()`.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from specdec import InputError, answer_chats, parse_json_lines, read_chat_prompts

Messages = list[dict[str, str]]


def default_prompts_path() -> Path:
    return Path(str(resources.files("specdec_plugin_retrieval") / "data" / "self_distill_prompts.jsonl"))


def self_distill(output: str | os.PathLike, *, prompts_path: str | os.PathLike | None = None,
                 model_name: str | None = None, corpus_path: str | os.PathLike | None = None,
                 max_new_tokens: int = 384, batch_size: int = 8, limit: int | None = None,
                 overwrite: bool = False, progress: bool = True):
    """Answer the prompts with the model, append the chats to `corpus_path` (default: next to the
    store, `<output>.corpus.jsonl`), and build the store at `output` from that corpus."""
    from specdec import load_model
    from specdec_plugin_retrieval.corpus import build_from_corpus

    output = Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists; choose another output folder or overwrite it")
    prompts = read_chat_prompts(prompts_path or default_prompts_path())[:limit]
    corpus = Path(corpus_path) if corpus_path else output.with_name(output.name + ".corpus.jsonl")
    done = _answered(corpus)
    todo = [messages for messages in prompts if _key(messages) not in done]
    model, tokenizer = load_model(model_name)
    if todo:
        answers = answer_chats(model, tokenizer, todo, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=progress)
        corpus.parent.mkdir(parents=True, exist_ok=True)
        with corpus.open("a", encoding="utf-8") as file:
            for index, _, answer in answers:
                text = tokenizer.decode(answer, skip_special_tokens=True).strip()
                record = {"messages": todo[index] + [{"role": "assistant", "content": text}]}
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
                file.flush()
    return build_from_corpus([corpus], tokenizer, output, overwrite=overwrite, progress=progress)


def _key(messages: Messages) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def _answered(corpus: Path) -> set[str]:
    """Prompts (conversations without their last, assistant turn) the corpus already answers.

    A last line cut short by an interrupted run is removed, so that its prompt is answered again.
    """
    if not corpus.is_file():
        return set()
    text = corpus.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        corpus.write_text(text, encoding="utf-8")
    done = set()
    for number, record in parse_json_lines(text, corpus):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list):
            raise InputError(f"{corpus}:{number}: not a conversation record; fix or delete the "
                             f"corpus file to start over")
        done.add(_key(messages[:-1]))
    return done
