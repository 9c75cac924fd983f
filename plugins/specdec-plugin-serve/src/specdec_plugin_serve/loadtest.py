"""Load test: replay Spec-Bench questions against a running `specdec serve`, speculation on and off.

    python -m specdec_plugin_serve.loadtest --url http://127.0.0.1:8000 \\
        --questions ../shared/data/spec_bench/dev.jsonl --limit 10 --concurrency 1 4 16 64 \\
        --max-tokens 128 --output loadtest-results

For each concurrency C, the first turns of the selected questions (repeated to at least 4C
requests) are sent as streamed chat completions by C client tasks, with speculation on (the
pipeline's drafter) and off (`{"enabled": false}`) on the same server. The modes alternate in
blocks of 2C requests (on, off, off, on, ...: at concurrency 1 every second request), so that a
machine whose load drifts (other jobs) slows both alike; at least two blocks per mode, so that
each mode is measured after the other one too (whatever one block pays alone, such as a cache
that grew in it before the server prepared its cache at start, then biases neither mode: "Serving
under load" in docs/benchmarks.md). Per mode and concurrency it reports:

- throughput: generated tokens (from `usage`) / the round's wall time, and requests/s;
- TTFT: from sending the request to its first text, p50/p90/p99;
- ITL: each request's mean time per token after the first ((end - first text) / (tokens - 1),
  vLLM's TPOT), p50/p90/p99;
- mean accepted tokens per step, acceptance rate and drafting time per generated token (the
  drafters' time summed over the requests), from the server's /metrics for the round;
- what the server adds: the requests' latency as the client sees it minus their time in the
  scheduler (queue and decoding, from /metrics), per generated token and as a share of the latency:
  HTTP, JSON, tokenization, the hand-offs between threads and the SSE stream;
- per block too (results.json's "blocks": the same figures for each block, in the order sent),
  to tell a slow block from a slow mode;
- at temperature 0, how many answers differ between the two modes (speculation is lossless, so
  only batched float32 rounding could flip a near-tie).

With `--offline PIPELINE.yaml` (the file the server runs) it measures instead what the server adds:
at concurrency 1, each question is answered by the server and then by the same pipeline in this
process (`Pipeline.generate`), alternating, with speculation on and off; it reports both
throughputs and the server's extra milliseconds per token.

The client is an asyncio loop on httpx with a plain SSE reader (a JSON parse per chunk), so that
it takes little CPU from a server on the same machine. Every request has a timeout; the run is
bounded by its request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import httpx

from specdec import mean_accepted_tokens, read_json_lines, tokens_per_second

MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
MODES = {"on": None, "off": {"enabled": False}}


@dataclass(frozen=True)
class Prompt:
    question_id: Any
    task: str
    text: str  # the question's first turn


@dataclass
class Record:
    """One request's measurements (times in seconds from its send)."""

    question_id: Any
    task: str
    mode: str
    concurrency: int
    ttft: float | None = None
    latency: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    text: str = ""
    error: str | None = None
    chunks: int = 0
    sent: float = 0.0  # time.perf_counter() when the request was sent

    @property
    def itl(self) -> float | None:
        if self.ttft is None or self.latency is None or self.completion_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.completion_tokens - 1)


@dataclass
class Round:
    mode: str
    concurrency: int
    wall: float
    records: list[Record] = field(default_factory=list)
    server: dict = field(default_factory=dict)  # /metrics deltas for the round


def load_prompts(path: str, tasks: Sequence[str] | None, limit: int | None) -> list[Prompt]:
    """The first turn of the first `limit` questions of each task (file order)."""
    prompts, taken = [], {}
    for number, item in read_json_lines(path):
        if not isinstance(item, dict) or not isinstance(item.get("turns"), list) or not item["turns"]:
            raise SystemExit(f"{path}:{number}: expected Spec-Bench's format: question_id, category, turns")
        category = str(item.get("category", ""))
        task = "mt_bench" if category in MT_BENCH_CATEGORIES else category
        if tasks and task not in tasks:
            continue
        if limit is not None and taken.get(task, 0) >= limit:
            continue
        taken[task] = taken.get(task, 0) + 1
        prompts.append(Prompt(item.get("question_id", number), task, item["turns"][0]))
    if not prompts:
        raise SystemExit(f"{path}: no questions{' for --tasks ' + ' '.join(tasks) if tasks else ''}")
    return prompts


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: Prompt, mode: str,
                      concurrency: int, max_tokens: int, timeout: float) -> Record:
    record = Record(prompt.question_id, prompt.task, mode, concurrency)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt.text}],
                            "max_tokens": max_tokens, "temperature": 0, "stream": True,
                            "stream_options": {"include_usage": True}}
    if MODES[mode] is not None:
        body["speculation"] = MODES[mode]
    pieces = []
    started = record.sent = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread()).decode(errors='replace')}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk:
                    record.error = chunk["error"].get("message", str(chunk["error"]))
                    break
                if chunk.get("usage"):
                    record.completion_tokens = chunk["usage"]["completion_tokens"]
                    record.prompt_tokens = chunk["usage"]["prompt_tokens"]
                for choice in chunk.get("choices", ()):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        record.chunks += 1
                        if record.ttft is None:
                            record.ttft = time.perf_counter() - started
                        pieces.append(content)
                    record.finish_reason = choice.get("finish_reason") or record.finish_reason
    except (httpx.HTTPError, ValueError) as error:
        record.error = f"{type(error).__name__}: {error}"
    record.latency = time.perf_counter() - started
    record.text = "".join(pieces)
    return record


async def run_round(url: str, model: str, prompts: Sequence[Prompt], mode: str, concurrency: int,
                    max_tokens: int, timeout: float) -> Round:
    """Send every prompt with `concurrency` client tasks; the round's wall time and records."""
    queue: asyncio.Queue = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    records: list[Record] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        before = await scrape(client, url)

        async def worker():
            while not queue.empty():
                prompt = queue.get_nowait()
                records.append(await one_request(client, url, model, prompt, mode, concurrency, max_tokens, timeout))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        after = await scrape(client, url)
    return Round(mode, concurrency, wall, records, {key: after.get(key, 0.0) - before.get(key, 0.0)
                                                    for key in after})


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The server's counters, summed over every label but `drafter` ("name|drafter" keys)."""
    wanted = ("specdec:generation_tokens_total", "specdec:num_steps_total", "specdec:spec_decode_num_draft_tokens_total",
              "specdec:spec_decode_num_accepted_tokens_total", "specdec:draft_seconds_total",
              "specdec:request_queue_time_seconds_sum", "specdec:request_inference_time_seconds_sum")
    values: dict[str, float] = {}
    text = (await client.get(f"{url}/metrics", timeout=30)).text
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in wanted:
            drafter = line.split('drafter="', 1)[1].split('"', 1)[0] if 'drafter="' in line else ""
            key = f"{name}|{drafter}"
            values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def summarize(round_: Round, drafter: str) -> dict:
    ok = [record for record in round_.records if record.error is None]
    tokens = sum(record.completion_tokens for record in ok)
    label = drafter if round_.mode == "on" else "none"
    server = round_.server
    steps = server.get(f"specdec:num_steps_total|{label}", 0.0)
    generated = server.get(f"specdec:generation_tokens_total|{label}", 0.0)
    drafted = server.get(f"specdec:spec_decode_num_draft_tokens_total|{label}", 0.0)
    accepted = server.get(f"specdec:spec_decode_num_accepted_tokens_total|{label}", 0.0)
    ttfts = [record.ttft for record in ok if record.ttft is not None]
    latency = sum(record.latency for record in ok)
    in_scheduler = (server.get(f"specdec:request_queue_time_seconds_sum|{label}", 0.0)
                    + server.get(f"specdec:request_inference_time_seconds_sum|{label}", 0.0))
    outside = latency - in_scheduler
    itls = [record.itl for record in ok if record.itl is not None]
    return {
        "mode": round_.mode, "concurrency": round_.concurrency, "requests": len(round_.records),
        "errors": len(round_.records) - len(ok), "tokens": tokens, "wall_s": round_.wall,
        "tokens_per_s": tokens_per_second(tokens, round_.wall),
        "requests_per_s": len(ok) / round_.wall if round_.wall > 0 else 0.0,
        "ttft_p50": percentile(ttfts, 0.5), "ttft_p90": percentile(ttfts, 0.9), "ttft_p99": percentile(ttfts, 0.99),
        "itl_p50": percentile(itls, 0.5), "itl_p90": percentile(itls, 0.9), "itl_p99": percentile(itls, 0.99),
        "mean_accepted_tokens": mean_accepted_tokens(generated, steps) if steps else None,
        "acceptance_rate": accepted / drafted if drafted else None,
        "server_ms_per_token": 1000 * outside / tokens if tokens else None,
        "server_share": outside / latency if latency else None,
        # drafting time per generated token, over all requests of the round (they draft concurrently in a step)
        "draft_ms_per_token": 1000 * server.get(f"specdec:draft_seconds_total|{label}", 0.0) / generated
        if generated else None,
    }


def differing(on: Round, off: Round) -> list[int]:
    """[answers with speculation off that differ from the same question's answer with it on, answers compared]."""
    first = {}
    for record in on.records:
        if record.error is None:
            first.setdefault(record.question_id, record.text)
    compared = [record for record in off.records if record.error is None and record.question_id in first]
    return [sum(first[record.question_id] != record.text for record in compared), len(compared)]


def markdown(rows: list[dict], differ: dict[int, list[int]]) -> str:
    def ms(value):
        return "-" if value is None else f"{1000 * value:.0f}"

    lines = ["| concurrency | speculation | requests | tok/s | on/off | req/s | TTFT p50 / p90 / p99 ms | "
             "ITL p50 / p90 / p99 ms | accepted/step | acceptance | drafting ms/token | server ms/token (share) | "
             "differ |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_key = {(row["concurrency"], row["mode"]): row for row in rows}
    for row in rows:
        off = by_key.get((row["concurrency"], "off"))
        ratio = f"{row['tokens_per_s'] / off['tokens_per_s']:.2f}x" if row["mode"] == "on" and off and \
            off["tokens_per_s"] else ""
        accepted = "-" if row["mean_accepted_tokens"] is None else f"{row['mean_accepted_tokens']:.2f}"
        rate = "-" if row["acceptance_rate"] is None else f"{row['acceptance_rate']:.2f}"
        drafting = "-" if row["draft_ms_per_token"] is None else f"{row['draft_ms_per_token']:.2f}"
        served = "-" if row["server_ms_per_token"] is None else \
            f"{row['server_ms_per_token']:.2f} ({100 * row['server_share']:.1f}%)"
        errors = f" ({row['errors']} failed)" if row["errors"] else ""
        lines.append(f"| {row['concurrency']} | {row['mode']} | {row['requests']}{errors} | {row['tokens_per_s']:.1f} | "
                     f"{ratio} | {row['requests_per_s']:.2f} | {ms(row['ttft_p50'])} / {ms(row['ttft_p90'])} / "
                     f"{ms(row['ttft_p99'])} | {ms(row['itl_p50'])} / {ms(row['itl_p90'])} / {ms(row['itl_p99'])} | "
                     f"{accepted} | {rate} | {drafting} | {served} | {_fraction(differ.get(row['concurrency'])) if row['mode'] == 'on' else ''} |")
    return "\n".join(lines) + "\n"


def _fraction(pair: list[int] | None) -> str:
    return "" if pair is None else f"{pair[0]}/{pair[1]}"


async def run(args: argparse.Namespace) -> dict:
    url = args.url.rstrip("/")
    async with httpx.AsyncClient() as client:
        try:
            listed = (await client.get(f"{url}/v1/models", timeout=30)).json()["data"][0]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
            raise SystemExit(f"cannot reach a specdec server at {url} ({type(error).__name__}: {error}); "
                             f"start one with `specdec serve` and pass its --url") from None
    model, drafter = listed["id"], listed.get("drafter", "")
    prompts = load_prompts(args.questions, args.tasks, args.limit)
    if args.offline:
        return await overhead(args, url, model, prompts)
    print(f"loadtest: {len(prompts)} questions, model '{model}' (drafter {drafter}), concurrency "
          f"{' '.join(map(str, args.concurrency))}, {args.max_tokens} new tokens", file=sys.stderr)
    rounds: list[Round] = []
    blocks: list[dict] = []  # each block's own summary, in the order sent (results.json only)
    for concurrency in args.concurrency:
        requests = [prompts[i % len(prompts)] for i in range(max(len(prompts), 4 * concurrency))]
        if args.warmup:  # the first batch of a new size measures its draft costs: not in the timing
            for mode in args.modes:
                await run_round(url, model, requests[:concurrency], mode, concurrency, 8, args.timeout)
        totals = {mode: Round(mode, concurrency, 0.0) for mode in args.modes}
        size = 2 * concurrency
        for number, start in enumerate(range(0, len(requests), size)):
            for mode in (args.modes if number % 2 == 0 else list(reversed(args.modes))):
                block = await run_round(url, model, requests[start:start + size], mode, concurrency,
                                        args.max_tokens, args.timeout)
                blocks.append(summarize(block, drafter))
                total = totals[mode]
                total.wall += block.wall
                total.records.extend(block.records)
                for key, value in block.server.items():
                    total.server[key] = total.server.get(key, 0.0) + value
        for mode in args.modes:
            rounds.append(totals[mode])
            row = summarize(totals[mode], drafter)
            print(f"loadtest: concurrency {concurrency}, speculation {mode}: {row['tokens_per_s']:.1f} tok/s, "
                  f"{row['errors']} errors, {totals[mode].wall:.1f} s", file=sys.stderr)
    rows = [summarize(done, drafter) for done in rounds]
    differ = {}
    for concurrency in args.concurrency:
        pair = {done.mode: done for done in rounds if done.concurrency == concurrency}
        if "on" in pair and "off" in pair:
            differ[concurrency] = differing(pair["on"], pair["off"])
    return {"url": url, "model": model, "drafter": drafter, "questions": args.questions, "limit": args.limit,
            "max_tokens": args.max_tokens, "machine": machine(), "rows": rows, "differ": differ, "blocks": blocks,
            "records": [asdict(record) for done in rounds for record in done.records]}


async def overhead(args: argparse.Namespace, url: str, model: str, prompts: Sequence[Prompt]) -> dict:
    """The server against the same pipeline offline, one request at a time, alternating request by
    request; tokens/s over all requests (prefill included, as `specdec bench` counts)."""
    from specdec import Pipeline

    from specdec_plugin_serve.cli import prepare, resolve_max_model_len

    pipeline = Pipeline.from_yaml(args.offline)
    # what the server did at start (with the default --max-model-len): no offline request pays for it either
    prepare(pipeline, 1, resolve_max_model_len(pipeline, None))
    totals = {(mode, where): [0, 0.0] for mode in args.modes for where in ("server", "offline")}
    async with httpx.AsyncClient() as client:
        for index, prompt in enumerate(prompts):
            for mode in (args.modes if index % 2 == 0 else list(reversed(args.modes))):
                record = await one_request(client, url, model, prompt, mode, 1, args.max_tokens, args.timeout)
                if record.error is not None:
                    raise SystemExit(f"loadtest: the server failed question {prompt.question_id}: {record.error}")
                started = time.perf_counter()
                result = pipeline.generate([{"role": "user", "content": prompt.text}], temperature=0.0,
                                           max_new_tokens=args.max_tokens,
                                           max_draft_tokens=0 if mode == "off" else None)
                offline_seconds = time.perf_counter() - started
                if result.text != record.text:
                    print(f"loadtest: question {prompt.question_id} ({mode}): the server's answer differs from "
                          f"the offline one", file=sys.stderr)
                for where, tokens, seconds in (("server", record.completion_tokens, record.latency),
                                               ("offline", len(result.token_ids), offline_seconds)):
                    totals[mode, where][0] += tokens
                    totals[mode, where][1] += seconds
    rows = []
    for mode in args.modes:
        (server_tokens, server_seconds), (offline_tokens, offline_seconds) = totals[mode, "server"], totals[mode, "offline"]
        rows.append({"mode": mode, "requests": len(prompts),
                     "server_tokens_per_s": tokens_per_second(server_tokens, server_seconds),
                     "offline_tokens_per_s": tokens_per_second(offline_tokens, offline_seconds),
                     "server_extra_ms_per_token": 1000 * (server_seconds / server_tokens - offline_seconds / offline_tokens)})
    return {"url": url, "model": model, "offline": args.offline, "max_tokens": args.max_tokens,
            "machine": machine(), "overhead": rows}


def overhead_markdown(rows: list[dict]) -> str:
    lines = ["| speculation | requests | server tok/s | offline tok/s | server / offline | server's extra ms per token |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['requests']} | {row['server_tokens_per_s']:.1f} | "
                     f"{row['offline_tokens_per_s']:.1f} | "
                     f"{row['server_tokens_per_s'] / row['offline_tokens_per_s']:.3f} | "
                     f"{row['server_extra_ms_per_token']:.2f} |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec_plugin_serve.loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    parser.add_argument("--questions", "-q", required=True, help="Spec-Bench questions (JSON Lines)")
    parser.add_argument("--tasks", nargs="+", help="tasks to use (default: all in the file)")
    parser.add_argument("--limit", type=int, default=10, help="questions per task (default 10)")
    parser.add_argument("--concurrency", "-c", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-tokens", "-n", type=int, default=128, help="tokens per answer (default 128)")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["on", "off"],
                        help="speculation on (the pipeline's drafter) and/or off, per request (default both)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed warm-up round at each concurrency")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    parser.add_argument("--offline", metavar="PIPELINE.yaml",
                        help="measure the server's overhead against this pipeline (the server's file) run in "
                             "this process, request by request at concurrency 1, instead of the load test")
    parser.add_argument("--output", "-o", help="folder for results.json and report.md")
    args = parser.parse_args(argv)
    if any(value < 1 for value in args.concurrency) or args.max_tokens < 1 or (args.limit or 1) < 1:
        parser.error("--concurrency, --max-tokens and --limit must be >= 1")
    results = asyncio.run(run(args))
    table = overhead_markdown(results["overhead"]) if args.offline else markdown(results["rows"], results["differ"])
    print(table)
    if args.output:
        folder = Path(args.output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results, indent=1))
        (folder / "report.md").write_text(f"{results['machine']['cpu']}, {results['machine']['time']}; model "
                                          f"'{results['model']}', {args.max_tokens} new tokens\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
