"""Benchmark of the engine itself: plain decoding against `model.generate()`, and the per-step
overhead outside the model forwards.

    python -m specdec_plugin_bench.enginebench --questions dev.jsonl                 # default model, CPU
    python -m specdec_plugin_bench.enginebench --questions dev.jsonl --device cuda   # on a GPU
    python -m specdec_plugin_bench.enginebench --tiny        # tiny random models: AR vs draft-model speculation

The prompts are the first user turns of a Spec-Bench-style question file (`--questions`, JSON
Lines with a `turns` list per question).

Every forward of the target is timed by wrapping `model.forward`; a step's overhead is its wall
time minus the time inside the forward (drafting excluded: the `none` drafter drafts nothing).
Results are printed as Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from specdec import (DraftModelDrafter, HFVerifier, NoDrafter, RejectionSampling, SamplingParams,
                     SpeculativeDecoder, synchronize)

@contextmanager
def timed_forward(model: torch.nn.Module, device: torch.device):
    """Accumulate the seconds spent inside `model.forward` (synchronized on CUDA)."""
    original = model.forward
    record = {"seconds": 0.0, "calls": 0, "durations": []}

    def forward(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        output = original(*args, **kwargs)
        synchronize(device)
        elapsed = time.perf_counter() - start
        record["seconds"] += elapsed
        record["calls"] += 1
        record["durations"].append(elapsed)
        return output

    model.forward = forward
    try:
        yield record
    finally:
        model.forward = original


def load_prompts(tokenizer, count: int, path: str | Path) -> list[list[int]]:
    """The first user turn of `count` questions spread over the file, through the chat template."""
    from specdec_plugin_bench.questions import load_questions

    questions = load_questions(path)
    step = max(1, len(questions) // count)
    prompts = []
    for question in questions[::step][:count]:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": question.turns[0]}],
                                                add_generation_prompt=True, tokenize=True)
        prompts.append(list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
    return prompts


def run_specdec(model, prompts, max_new_tokens, device, drafter=None) -> dict:
    decoder = SpeculativeDecoder(HFVerifier(model, ()), drafter or NoDrafter(), RejectionSampling())
    params = SamplingParams(max_new_tokens=max_new_tokens)
    decoder.generate(prompts[0], params.replace(max_new_tokens=8))  # warm-up
    tokens, wall, forward, steps, outputs = 0, 0.0, 0.0, 0, []
    with timed_forward(model, device) as record:
        for prompt in prompts:
            before = record["seconds"]
            synchronize(device)
            start = time.perf_counter()
            result = decoder.generate(prompt, params)
            synchronize(device)
            wall += time.perf_counter() - start
            forward += record["seconds"] - before
            tokens += len(result.tokens)
            steps += result.stats.steps
            outputs.append(result.tokens)
        typical = statistics.median(record["durations"])
    return {"tokens": tokens, "wall": wall, "forward": forward, "steps": steps, "outputs": outputs,
            "median_forward": typical}


def run_hf_generate(model, prompts, max_new_tokens, device, assistant=None) -> dict:
    def generate(prompt, count):
        ids = torch.tensor([prompt], device=device)
        extra = {"assistant_model": assistant} if assistant is not None else {}
        with torch.inference_mode():
            output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=count, min_new_tokens=count, eos_token_id=None,
                                    pad_token_id=0, **extra)
        return output[0, len(prompt):].tolist()

    generate(prompts[0], 8)  # warm-up
    tokens, wall, forward, calls, outputs = 0, 0.0, 0.0, 0, []
    with timed_forward(model, device) as record:
        for prompt in prompts:
            before, before_calls = record["seconds"], record["calls"]
            synchronize(device)
            start = time.perf_counter()
            output = generate(prompt, max_new_tokens)
            synchronize(device)
            wall += time.perf_counter() - start
            forward += record["seconds"] - before
            calls += record["calls"] - before_calls
            tokens += len(output)
            outputs.append(output)
        typical = statistics.median(record["durations"])
    return {"tokens": tokens, "wall": wall, "forward": forward, "steps": calls, "outputs": outputs,
            "median_forward": typical}


def _row(name: str, run: dict, reference: dict | None = None) -> str:
    """One table row. Overhead = (wall - time inside forwards) per step, as a share of the
    median forward (a decode step's forward; the prefill forward is an outlier the median skips)."""
    per_step_ms = 1000 * run["wall"] / run["steps"]
    outside_ms = 1000 * (run["wall"] - run["forward"]) / run["steps"]
    median_ms = 1000 * run["median_forward"]
    same = "" if reference is None else ("yes" if run["outputs"] == reference["outputs"] else "NO")
    return (f"| {name} | {run['tokens'] / run['wall']:.2f} | {run['tokens'] / run['steps']:.2f} | "
            f"{per_step_ms:.1f} | {median_ms:.1f} | {outside_ms:.2f} ({100 * outside_ms / median_ms:.1f}%) | {same} |")


def benchmark_default(args) -> None:
    from specdec import load_model

    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    device = model.device
    prompts = load_prompts(tokenizer, args.prompts, args.questions)
    print(f"model {args.model or 'default (SmolLM2-135M-Instruct)'}, device {device}, dtype {model.dtype}, "
          f"{len(prompts)} prompts (mean {statistics.mean(map(len, prompts)):.0f} tokens), "
          f"{args.max_new_tokens} new tokens each, torch threads {torch.get_num_threads()}\n")
    print("| method | tokens/s | tokens/forward | ms/step | median forward ms | ms/step outside forwards (share of a forward) | same output as specdec AR |")
    print("|---|---|---|---|---|---|---|")
    for repeat in range(args.repeats):
        ours = run_specdec(model, prompts, args.max_new_tokens, device)
        hf = run_hf_generate(model, prompts, args.max_new_tokens, device)
        print(_row(f"specdec AR (run {repeat + 1})", ours))
        print(_row(f"HF generate (run {repeat + 1})", hf, ours))


def tiny_pair(device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny random target whose last six of eight layers add little to the residual stream,
    and a draft made of its first two layers: a cheap draft that agrees with the target often,
    the situation a trained small draft model creates for a real target."""
    from specdec.testing import tiny_llama

    target = tiny_llama(0, vocab_size=512, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4,
                        max_positions=1024, init_std=0.1)
    with torch.no_grad():
        for layer in target.model.layers[2:]:
            layer.self_attn.o_proj.weight.mul_(0.1)
            layer.mlp.down_proj.weight.mul_(0.1)
    draft = copy.deepcopy(target)
    draft.model.layers = draft.model.layers[:2]
    draft.config.num_hidden_layers = 2
    return target.to(device), draft.to(device)


def benchmark_tiny(args) -> None:
    target, draft = tiny_pair(args.device)
    device = target.device
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (64,), generator=generator).tolist() for _ in range(args.prompts)]
    print(f"tiny random Llama target (8 layers, hidden 512, vocab 512) and a draft of its first 2 layers, "
          f"device {device}, {len(prompts)} prompts of 64 tokens, {args.max_new_tokens} new tokens each\n")
    print("| method | tokens/s | tokens/forward | ms/step | median forward ms | ms/step outside forwards (share of a forward) | same output as specdec AR |")
    print("|---|---|---|---|---|---|---|")
    ours = run_specdec(target, prompts, args.max_new_tokens, device)
    print(_row("specdec AR", ours))
    for k in (2, 4, 6):
        speculative = run_specdec(target, prompts, args.max_new_tokens, device, DraftModelDrafter(draft, k))
        print(_row(f"specdec draft_model k={k}", speculative, ours))
    print(_row("HF generate", run_hf_generate(target, prompts, args.max_new_tokens, device), ours))
    print(_row("HF assisted (assistant_model)",
               run_hf_generate(target, prompts, args.max_new_tokens, device, assistant=draft), ours))
    print("\n(ms/step and overhead of the speculative rows include drafting)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specdec_plugin_bench.enginebench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF id or local path (default: the embedded default model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny random models: AR vs draft-model speculation")
    parser.add_argument("--questions", help="question file (JSON Lines, Spec-Bench format); required "
                                            "without --tiny")
    args = parser.parse_args(argv)
    if not args.tiny and not args.questions:
        parser.error("--questions is required (a Spec-Bench-style JSON Lines file), unless --tiny")
    with torch.inference_mode():
        (benchmark_tiny if args.tiny else benchmark_default)(args)


if __name__ == "__main__":
    main()
