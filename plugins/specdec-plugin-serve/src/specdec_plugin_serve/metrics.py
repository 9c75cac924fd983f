"""Prometheus metrics of the server, named as vLLM names them where vLLM has one.

Every name is vLLM's with the prefix `specdec:` instead of `vllm:` (so a vLLM dashboard needs one
substitution); the metrics vLLM lacks are marked "specdec's own" below. Labels: `model_name`
(the served model), and `drafter` on everything about speculation: the pipeline's drafter type,
or `none` for requests sent with speculation off, so on and off can be compared on one server.

Conventions (as `specdec.GenerationStats` defines them):
- a step is one target forward a request took part in;
- mean accepted tokens = generated tokens / steps: it counts the target's own token, so plain
  decoding scores exactly 1.0;
- a draft is a step in which the request's drafter proposed at least one token; acceptance at
  position d counts the drafts that reached depth d and had at least d tokens accepted;
- inter-token latency is observed once per token: a step that commits n tokens after t seconds
  observes t / n, n times (speculation commits several tokens per step).

The registry is the server's own (not prometheus-client's global one), so that several servers
in one process (tests) keep apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from specdec import mean_accepted_tokens

#: Seconds; vLLM's buckets for time to first token, extended down for small models on CPU.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


class Metrics:
    """The server's collectors; `render()` is the text `/metrics` serves."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.registry = registry = CollectorRegistry()
        model, per_drafter = ["model_name"], ["model_name", "drafter"]
        self.running = Gauge("specdec:num_requests_running", "Requests in the batch being decoded.",
                             model, registry=registry)
        self.waiting = Gauge("specdec:num_requests_waiting", "Requests waiting for a slot in the batch.",
                             model, registry=registry)
        self.prompt_tokens = Counter("specdec:prompt_tokens", "Prompt tokens of admitted requests.",
                                     model, registry=registry)
        self.generation_tokens = Counter("specdec:generation_tokens", "Generated tokens.",
                                         per_drafter, registry=registry)
        self.success = Counter("specdec:request_success", "Finished requests by finish reason (stop, length; "
                               "abort: cancelled by its client or at shutdown; error: failed).",
                               model + ["finished_reason"], registry=registry)
        self.steps = Counter("specdec:num_steps", "specdec's own: target forwards, summed over the requests "
                             "taking part (generation_tokens / num_steps = mean accepted tokens).",
                             per_drafter, registry=registry)
        self.drafts = Counter("specdec:spec_decode_num_drafts", "Steps in which the drafter proposed tokens.",
                              per_drafter, registry=registry)
        self.draft_tokens = Counter("specdec:spec_decode_num_draft_tokens", "Draft tokens proposed (every "
                                    "branch of a tree counts).", per_drafter, registry=registry)
        self.accepted_tokens = Counter("specdec:spec_decode_num_accepted_tokens", "Draft tokens accepted.",
                                       per_drafter, registry=registry)
        self.draft_seconds = Counter("specdec:draft_seconds", "specdec's own: time in the requests' drafters "
                                     "(propose and observe), summed over requests.", per_drafter, registry=registry)
        self.accepted_per_pos = Counter("specdec:spec_decode_num_accepted_tokens_per_pos", "Drafts with at "
                                        "least position + 1 tokens accepted, by draft position (from 0).",
                                        per_drafter + ["position"], registry=registry)
        self.acceptance_rate = Gauge("specdec:spec_decode_draft_acceptance_rate", "Accepted / proposed draft "
                                     "tokens since the server started (vLLM V0's name).", per_drafter,
                                     registry=registry)
        self.mean_accepted = Gauge("specdec:spec_decode_mean_accepted_tokens", "specdec's own: generated "
                                   "tokens per step since the server started (plain decoding: 1.0).",
                                   per_drafter, registry=registry)
        self.ttft = Histogram("specdec:time_to_first_token_seconds", "From the request's arrival at the "
                              "scheduler to its first token.", per_drafter, buckets=TTFT_BUCKETS, registry=registry)
        self.itl = Histogram("specdec:inter_token_latency_seconds", "Time per generated token after the first.",
                             per_drafter, buckets=ITL_BUCKETS, registry=registry)
        self.e2e = Histogram("specdec:e2e_request_latency_seconds", "From arrival to the request's end.",
                             per_drafter, buckets=E2E_BUCKETS, registry=registry)
        self.queue_time = Histogram("specdec:request_queue_time_seconds", "From arrival to admission into the "
                                    "batch.", per_drafter, buckets=E2E_BUCKETS, registry=registry)
        self.inference_time = Histogram("specdec:request_inference_time_seconds", "From admission into the batch "
                                        "to the last token: the decoding itself, prefill included.", per_drafter,
                                        buckets=E2E_BUCKETS, registry=registry)
        self._totals: dict[str, list[int]] = {}  # drafter -> [draft tokens, accepted, tokens, steps]
        self.set_load(0, 0)  # present from the first scrape

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def set_load(self, running: int, waiting: int) -> None:
        self.running.labels(self.model_name).set(running)
        self.waiting.labels(self.model_name).set(waiting)

    def request_started(self, prompt_tokens: int) -> None:
        self.prompt_tokens.labels(self.model_name).inc(prompt_tokens)

    def request_finished(self, tracked, reason: str, now: float, handle=None) -> None:
        """Count a request's end; with its `SequenceHandle` (it was admitted), its queue and decoding times."""
        labels = (self.model_name, tracked.label)
        self.success.labels(self.model_name, "abort" if reason == "cancelled" else reason).inc()
        self.e2e.labels(*labels).observe(now - tracked.arrived)
        if handle is not None and handle.started:
            self.queue_time.labels(*labels).observe(max(0.0, handle.started - tracked.arrived))
            self.inference_time.labels(*labels).observe(handle.stats.wall_seconds)

    def observe(self, tracked, stats, new_tokens: int, now: float) -> None:
        """Count what a request's statistics gained since the last call (driver thread, after a step)."""
        labels = (self.model_name, tracked.label)
        seen = tracked.seen
        drafted = list(stats.drafted_at_depth)
        accepted_by_depth = list(stats.accepted_at_depth)
        deltas = {"steps": stats.steps - seen.get("steps", 0),
                  "drafts": (drafted[0] if drafted else 0) - seen.get("drafts", 0),
                  "draft_tokens": stats.draft_tokens - seen.get("draft_tokens", 0),
                  "accepted": stats.accepted_draft_tokens - seen.get("accepted", 0)}
        previous = seen.get("by_depth", [])
        for depth, count in enumerate(accepted_by_depth):
            gained = count - (previous[depth] if depth < len(previous) else 0)
            if gained:
                self.accepted_per_pos.labels(*labels, str(depth)).inc(gained)
        drafting = stats.draft_seconds - seen.get("draft_seconds", 0.0)
        if drafting > 0:
            self.draft_seconds.labels(*labels).inc(drafting)
        seen.update(steps=stats.steps, drafts=drafted[0] if drafted else 0, draft_tokens=stats.draft_tokens,
                    accepted=stats.accepted_draft_tokens, by_depth=accepted_by_depth, draft_seconds=stats.draft_seconds)
        for counter, key in ((self.steps, "steps"), (self.drafts, "drafts"), (self.draft_tokens, "draft_tokens"),
                             (self.accepted_tokens, "accepted")):
            if deltas[key]:
                counter.labels(*labels).inc(deltas[key])
        if new_tokens:
            self.generation_tokens.labels(*labels).inc(new_tokens)
            if tracked.last_token is None:
                self.ttft.labels(*labels).observe(now - tracked.arrived)
            else:
                per_token = (now - tracked.last_token) / new_tokens
                histogram = self.itl.labels(*labels)
                for _ in range(new_tokens):
                    histogram.observe(per_token)
        totals = self._totals.setdefault(tracked.label, [0, 0, 0, 0])
        totals[0] += deltas["draft_tokens"]
        totals[1] += deltas["accepted"]
        totals[2] += new_tokens
        totals[3] += deltas["steps"]
        if totals[0]:
            self.acceptance_rate.labels(*labels).set(totals[1] / totals[0])
        if totals[3]:
            self.mean_accepted.labels(*labels).set(mean_accepted_tokens(totals[2], totals[3]))
