"""How often a cheaper copy of the target drafts the target's next token, and what its draft
forward costs: the two numbers that bound `low_precision` (docs/benchmarks.md, "Self-speculation").

For the first turn of `--questions` questions (round-robin over the tasks) the target answers
greedily; each copy then walks that answer one token at a time from the target's own cache entries
for the prompt (as the drafter starts from them) and its own entries after, and counts how often
its argmax is the target's next token. The copies run interleaved, so that load changes hit them
alike. Copies: `int8` as shipped (8-bit activations where `int8_full_range` allows them),
`int8-7bit` (torch's default activation range, forced), `bfloat16`, and `float32` (the target's
own weights: agreement 1.0 up to float ties, the reference cost).

    python plugins/specdec-plugin-selfspec/benchmarks/copy_agreement.py \
        --questions ../shared/data/spec_bench/dev.jsonl --prompts 10 --tokens 64
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

import specdec_plugin_selfspec.formats as formats
from specdec import load_model, read_json_lines
from specdec_plugin_selfspec.stack import DecoderStack

COPIES = ("int8", "int8-7bit", "bfloat16", "float32")


def first_turns(path: str, count: int) -> list[str]:
    by_task: dict[str, list[str]] = {}
    for _, record in read_json_lines(path):
        by_task.setdefault(record["category"], []).append(record["turns"][0])
    rounds = itertools.zip_longest(*by_task.values())
    return [text for text in itertools.chain.from_iterable(rounds) if text is not None][:count]


def build(model, copy: str) -> DecoderStack:
    fmt = copy.removesuffix("-7bit")
    full_range = formats.int8_full_range
    if copy.endswith("-7bit"):
        formats.int8_full_range = lambda: False
    try:
        dtype = formats.compute_dtype(fmt, model.dtype)
        return DecoderStack(model, formats.copy_layers(model, fmt), formats.head_projection(model, fmt, None),
                            model.model.norm.weight.detach().to(dtype), dtype)
    finally:
        formats.int8_full_range = full_range


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64, help="answer tokens walked per prompt")
    parser.add_argument("--copies", default=",".join(COPIES))
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    copies = {name: build(model, name) for name in args.copies.split(",")}
    reference = copies.get("float32") or build(model, "float32")
    agreed = dict.fromkeys(copies, 0)
    seconds: dict[str, list[float]] = {name: [] for name in copies}
    positions = 0
    for text in first_turns(args.questions, args.prompts):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)["input_ids"]
        answer = model.generate(prompt, max_new_tokens=args.tokens, do_sample=False)[0]
        start, end = prompt.shape[1], answer.shape[0]
        shape = (reference.num_layers, 2, reference.num_kv_heads, end + 1, reference.head_dim)
        prefix = torch.zeros(shape, dtype=model.dtype)
        reference.forward(answer[:start], torch.arange(start), prefix, 0, start,
                          torch.ones(start, start, dtype=torch.bool).tril())
        stores = {name: prefix.to(stack.dtype, copy=True) for name, stack in copies.items()}  # one each
        for position in range(start, end):  # the copy predicts answer[position] from answer[:position]
            order = list(copies.items())
            for name, stack in order if position % 2 else reversed(order):
                tic = time.perf_counter()
                logits = stack.forward(answer[position - 1:position], torch.tensor([position - 1]), stores[name],
                                       position - 1, position)
                seconds[name].append(time.perf_counter() - tic)
                agreed[name] += int(logits[-1].argmax()) == int(answer[position])
            positions += 1
    print(f"{positions} answer positions; int8 activations: "
          f"{'8 bits' if formats.int8_full_range() else '7 bits'} on this machine")
    print(f"{'copy':>10} {'agreement':>10} {'forward ms':>11}")
    for name in copies:
        print(f"{name:>10} {agreed[name] / positions:>10.4f} {1e3 * statistics.median(seconds[name]):>11.2f}")


if __name__ == "__main__":
    main()
