"""Pipelines and prompts shared by tests/test_distributed.py and the ranks it launches (tp_worker.py)."""

#: Prompts of token ids with repeats in them, so that prompt lookup finds drafts.
PROMPTS = [[5, 9, 14, 3, 22, 5, 9, 14, 3, 7, 5, 9], [30, 2, 17, 30, 2, 17, 30, 8]]


def pipeline_data(case: str, model: str, tp_size: int = 1) -> dict:
    """The pipeline of a test case: its drafter and sampling on the tiny model at `model`."""
    drafters = {
        "prompt_lookup": {"type": "prompt_lookup", "params": {"num_tokens": 6}},
        "tree": {"type": "token_recycling", "params": {"top_k": 4, "tree": [[0], [1], [0, 0], [0, 1], [1, 0]]}},
        # a replicated draft model (tests/test_distributed.py saves it next to the target) sampling drafts
        "sampling_draft_model": {"type": "draft_model", "params": {"model": f"{model}-draft", "num_tokens": 3}},
    }
    drafter = drafters.get(case, drafters["prompt_lookup"])
    temperature = 0.8 if case.startswith("sampling") else 0.0
    return {"name": case, "target": {"model": model, "tp_size": tp_size}, "drafter": drafter,
            "acceptance": {"type": "rejection"}, "scheduler": {"max_batch_size": 2, "draft_budget": "off"},
            "sampling": {"temperature": temperature, "max_new_tokens": 24,
                         **({"seed": 1234} if case in ("sampling", "sampling_draft_model") else {})}}
