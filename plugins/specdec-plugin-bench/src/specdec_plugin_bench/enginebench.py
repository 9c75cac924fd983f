"""Benchmark of the engine itself: plain decoding against `model.generate()`, and the per-step
overhead outside the model forwards.

    python -m specdec_plugin_bench.enginebench --questions dev.jsonl                 # default model, CPU
    python -m specdec_plugin_bench.enginebench --questions dev.jsonl --device cuda   # on a GPU
    python -m specdec_plugin_bench.enginebench --tiny        # tiny random models: AR vs draft-model speculation
    python -m specdec_plugin_bench.enginebench --questions dev.jsonl --device cuda --dtype bfloat16 \
        --hf-static --batch-sizes 1 8 32                       # the GPU table of docs/benchmarks.md
    ... --random-weights                                       # the default model's shapes, random weights

On CUDA specdec replays its forwards from CUDA graphs, which bypass `model.forward`: the forward
time of a graph-replayed step is then the median of 50 replays of its captured graph, timed alone
(`graph_forward_seconds`). `--hf-static` adds `generate()` with `cache_implementation="static"`,
which transformers may compile with torch.compile on CUDA (a first call compiles; it is the warm-up).
`--batch-sizes` adds plain-decoding throughput through the step scheduler at each batch size,
every sequence generating exactly `--max-new-tokens` (stop tokens ignored).

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
                     SpeculativeDecoder, StepScheduler, mean_accepted_tokens, synchronize, tokens_per_second)

@contextmanager
def timed_forward(model: torch.nn.Module, device: torch.device):
    """Accumulate the seconds spent inside `model.forward` (synchronized on CUDA)."""
    original = model.forward
    record = {"seconds": 0.0, "calls": 0, "durations": []}

    def forward(*args, **kwargs):
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return original(*args, **kwargs)  # a CUDA graph being captured: no sync, not a timed call
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


def graph_forward_seconds(verifier: HFVerifier, repeats: int = 50) -> float | None:
    """Median time of one replay of the one-token, one-row CUDA graph with the longest span
    (a plain decoding step's forward), or None when no such graph was captured."""
    runner = verifier.runner
    captured = runner.graphs.captured() if runner.graphs is not None else {}
    keys = [key for key in captured if key[1:3] == (1, 1)]
    if not keys:
        return None
    graph = captured[max(keys, key=lambda key: key[3])]
    times = []
    for _ in range(repeats):
        synchronize(runner.device)
        start = time.perf_counter()
        graph.replay()
        synchronize(runner.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_specdec(model, prompts, max_new_tokens, device, drafter=None, cuda_graphs=True) -> dict:
    verifier = HFVerifier(model, (), cuda_graphs=cuda_graphs)
    decoder = SpeculativeDecoder(verifier, drafter or NoDrafter(), RejectionSampling())
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
    replayed = graph_forward_seconds(verifier)
    if replayed is not None:  # decode steps bypassed model.forward: count a replay per step
        eager_steps = record["calls"]  # prefills (and warm-up captures) still ran eagerly
        forward += replayed * max(steps - eager_steps, 0)
        typical = replayed
    return {"tokens": tokens, "wall": wall, "forward": forward, "steps": steps, "outputs": outputs,
            "median_forward": typical}


def run_hf_generate(model, prompts, max_new_tokens, device, assistant=None, static=False) -> dict:
    def generate(prompt, count):
        ids = torch.tensor([prompt], device=device)
        extra = {"assistant_model": assistant} if assistant is not None else {}
        if static:
            extra["cache_implementation"] = "static"
        with torch.inference_mode():
            output = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=count, min_new_tokens=count, eos_token_id=None,
                                    pad_token_id=0, **extra)
        return output[0, len(prompt):].tolist()

    generate(prompts[0], 8)  # warm-up (where transformers compiles the static-cache forward, it does so here)
    if static:  # possibly compiled: model.forward is not where the time goes; wall time only
        tokens, wall, outputs = 0, 0.0, []
        for prompt in prompts:
            synchronize(device)
            start = time.perf_counter()
            output = generate(prompt, max_new_tokens)
            synchronize(device)
            wall += time.perf_counter() - start
            tokens += len(output)
            outputs.append(output)
        return {"tokens": tokens, "wall": wall, "forward": None, "steps": tokens, "outputs": outputs,
                "median_forward": None}
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
    rate, accepted = tokens_per_second(run["tokens"], run["wall"]), mean_accepted_tokens(run["tokens"], run["steps"])
    same = "" if reference is None else (
        f"{sum(a == b for a, b in zip(run['outputs'], reference['outputs']))}/{len(run['outputs'])}")
    if run["forward"] is None:
        return f"| {name} | {rate:.2f} | {accepted:.2f} | {per_step_ms:.2f} | - | - | {same} |"
    outside_ms = 1000 * (run["wall"] - run["forward"]) / run["steps"]
    median_ms = 1000 * run["median_forward"]
    return (f"| {name} | {rate:.2f} | {accepted:.2f} | "
            f"{per_step_ms:.2f} | {median_ms:.2f} | {outside_ms:.2f} ({100 * outside_ms / median_ms:.1f}%) | {same} |")


def run_batched(model, prompts, max_new_tokens, batch_size) -> dict:
    """Plain decoding of every prompt through the step scheduler, `batch_size` at a time; every
    sequence generates exactly `max_new_tokens` (no stop tokens)."""
    verifier = HFVerifier(model, ())
    scheduler = StepScheduler(verifier, RejectionSampling(), drafter_factory=NoDrafter, max_batch_size=batch_size)
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=())
    scheduler.generate_batch(prompts[:batch_size], params.replace(max_new_tokens=8))  # warm-up, captures
    synchronize(model.device)
    start = time.perf_counter()
    results = scheduler.generate_batch(prompts, params)
    synchronize(model.device)
    wall = time.perf_counter() - start
    tokens = sum(len(result.tokens) for result in results)
    return {"tokens": tokens, "wall": wall, "outputs": [result.tokens for result in results],
            "graphs": len(verifier.runner.graphs) if verifier.runner.graphs is not None else 0}


def print_batched(model, prompts, args) -> None:
    """Throughput by batch size (plain decoding), with the prompts repeated to fill the largest batch."""
    largest = max(args.batch_sizes)
    pool = (prompts * (-(-2 * largest // len(prompts))))[: max(2 * largest, len(prompts))]
    print(f"\nplain decoding through the step scheduler, {len(pool)} requests of {args.max_new_tokens} tokens\n")
    print("| batch | tokens/s | vs batch 1 | wall s | CUDA graphs captured |")
    print("|---|---|---|---|---|")
    first = None
    for size in sorted(args.batch_sizes):
        run = run_batched(model, pool, args.max_new_tokens, size)
        rate = tokens_per_second(run["tokens"], run["wall"])
        first = first or rate
        print(f"| {size} | {rate:.1f} | {rate / first:.2f}x | {run['wall']:.1f} | {run['graphs']} |")


def random_default_model(device, dtype):
    """The default model's architecture (SmolLM2-135M) with random weights, for machines without
    its weights: every timing depends on shapes only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def benchmark_default(args) -> None:
    from specdec import load_model

    if args.random_weights:
        model = random_default_model(args.device, getattr(torch, args.dtype))
        generator = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 49152, (int(length),), generator=generator).tolist()
                   for length in torch.randint(60, 400, (args.prompts,), generator=generator)]
    else:
        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
        prompts = load_prompts(tokenizer, args.prompts, args.questions)
    device = model.device
    name = 'SmolLM2-135M shapes, random weights' if args.random_weights else (args.model or 'default (SmolLM2-135M-Instruct)')
    print(f"model {name}, device {device}, dtype {model.dtype}, "
          f"{len(prompts)} prompts (mean {statistics.mean(map(len, prompts)):.0f} tokens), "
          f"{args.max_new_tokens} new tokens each, torch threads {torch.get_num_threads()}\n")
    print("| method | tokens/s | tokens/forward | ms/step | median forward ms | ms/step outside forwards (share of a forward) | same output as specdec AR |")
    print("|---|---|---|---|---|---|---|")
    for repeat in range(args.repeats):
        ours = run_specdec(model, prompts, args.max_new_tokens, device)
        print(_row(f"specdec AR (run {repeat + 1})", ours))
        if args.skip_baselines:
            continue
        if device.type == "cuda":
            eager = run_specdec(model, prompts, args.max_new_tokens, device, cuda_graphs=False)
            print(_row(f"specdec AR, eager, no CUDA graphs (run {repeat + 1})", eager, ours))
        hf = run_hf_generate(model, prompts, args.max_new_tokens, device)
        print(_row(f"HF generate (run {repeat + 1})", hf, ours))
        if args.hf_static:
            try:
                static = run_hf_generate(model, prompts, args.max_new_tokens, device, static=True)
                print(_row(f'HF generate, cache_implementation="static" (run {repeat + 1})', static, ours))
            except Exception as error:  # noqa: BLE001 - report the baseline's failure, keep the table
                print(f"| HF generate static: failed ({type(error).__name__}: {str(error)[:200]}) | | | | | | |")
    if args.batch_sizes:
        print_batched(model, prompts, args)


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
    parser.add_argument("--random-weights", action="store_true",
                        help="the default model's architecture with random weights and random prompts")
    parser.add_argument("--hf-static", action="store_true",
                        help='add generate() with cache_implementation="static" (compiled by transformers)')
    parser.add_argument("--skip-baselines", action="store_true",
                        help="only specdec's own plain decoding (no generate() or eager rows)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[], metavar="N",
                        help="add plain-decoding throughput through the step scheduler at these batch sizes")
    parser.add_argument("--questions", help="question file (JSON Lines, Spec-Bench format); required "
                                            "without --tiny")
    args = parser.parse_args(argv)
    if not args.tiny and not args.questions and not args.random_weights:
        parser.error("--questions is required (a Spec-Bench-style JSON Lines file), unless --tiny")
    with torch.inference_mode():
        (benchmark_tiny if args.tiny else benchmark_default)(args)


if __name__ == "__main__":
    main()
