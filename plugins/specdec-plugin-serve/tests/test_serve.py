"""`specdec serve` with the real `openai` client against real servers on free 127.0.0.1 ports.

Two in-process servers on tiny random models (a uvicorn server in a thread, built as `specdec
serve` builds it): one speculates with a draft model, one with a test drafter that can fail or
slow down on request. Every greedy answer is compared with the offline `Pipeline.generate` of an
identical pipeline. The shutdown tests run `specdec serve` itself in a subprocess.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from specdec import BaseDrafter, Draft, Pipeline, hookimpl, load_plugins, main
from specdec.testing import check_plugin, perturbed_copy, save_tiny_model, tiny_tokenizer
from specdec_plugin_serve.app import create_app
from specdec_plugin_serve.server import bind, make_server

MAX_TOKENS = 24
PROMPTS = ["hello there, how are you?", "once upon a time", "abc abc abc abc", "the cat sat on the mat.",
           "why is the sky blue?", "zzz", "count: one two three", "a, b, c, d"]


# -- servers ----------------------------------------------------------------------------------------


class Running:
    """A server for `pipeline` on a free 127.0.0.1 port, in a thread; `close()` shuts it down as
    SIGTERM does."""

    def __init__(self, pipeline, shutdown_timeout: float = 5.0, max_model_len: int | None = None):
        listener = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self.app = create_app(pipeline, max_model_len=max_model_len)
        self.server = make_server(self.app, shutdown_timeout=shutdown_timeout, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        # no retries (a failure must show) and no pooled connections: uvicorn closes a keep-alive
        # connection idle for 5 s, and one reused at that moment fails with "Server disconnected
        # without sending a response" (real clients retry it). The client's HTTP library is httpx
        # or, in newer openai releases, httpx2: take its Limits from the class openai builds on.
        http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=60,
                                    http_client=openai.DefaultHttpxClient(
                                        limits=http.Limits(max_connections=64, max_keepalive_connections=0)))
        self.model = self.app.state.service.model_name

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()

    def metric(self, name: str, **labels) -> float:
        """A sample's value in /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                    return sample.value
        return 0.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny target and a perturbed copy of it as the draft model (same tokenizer)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("models")
    target = save_tiny_model(root / "target", seed=4)
    draft = perturbed_copy(AutoModelForCausalLM.from_pretrained(target), 0.3, seed=5)
    draft.save_pretrained(root / "draft")
    tiny_tokenizer().save_pretrained(root / "draft")
    return target, str(root / "draft")


def spec_data(models) -> dict:
    target, draft = models
    return {"name": "tiny-spec", "target": {"model": target},
            "drafter": {"type": "draft_model", "params": {"model": draft, "num_tokens": 3}},
            "sampling": {"temperature": 0, "max_new_tokens": MAX_TOKENS}, "scheduler": {"max_batch_size": 8}}


@pytest.fixture(scope="module")
def spec_server(models):
    running = Running(Pipeline.from_dict(spec_data(models)))
    yield running
    running.close()


@pytest.fixture(scope="module")
def offline(models):
    """The same pipeline, offline: the reference for every greedy answer."""
    pipeline = Pipeline.from_dict(spec_data(models))
    cache = {}

    def generate(prompt, chat: bool, **overrides):
        key = (prompt, chat, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = pipeline.generate([{"role": "user", "content": prompt}] if chat else prompt, **overrides)
        return cache[key]

    return generate


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fail_at_step: int | None = Field(None, ge=0, description="raise from propose at this step")
    delay: float = Field(0.0, ge=0.0, le=1.0, description="seconds to sleep in each propose")
    tag: str = Field("x", description="a text field: fixed for requests, as a model path is")


class Flaky(BaseDrafter):
    """Drafts the last two tokens again; raises at step `fail_at_step` (from `propose`, or from
    `observe`, which runs every step even when the draft budget asks for no draft); sleeps
    `delay` per step."""

    def __init__(self, params: FlakyParams):
        self.params = params
        self.steps = 0

    def start(self, prompt, params):
        self.steps = 0

    def _fail_now(self, step: int) -> None:
        if self.params.fail_at_step is not None and step >= self.params.fail_at_step:
            raise RuntimeError("the flaky drafter failed on purpose")

    def propose(self, context):
        self._fail_now(context.step)
        time.sleep(self.params.delay)
        return Draft.chain(list(context.tokens[-2:]))

    def observe(self, outcome):
        self.steps += 1
        self._fail_now(self.steps)


def flaky_plugins():
    module = types.ModuleType("flaky_drafter")

    def register_drafters(register):
        register("flaky", FlakyParams, lambda context, params: Flaky(params))

    module.register_drafters = hookimpl(register_drafters)
    return load_plugins([("flaky_drafter", module)], entry_points=False)


def flaky_data(models) -> dict:
    return {"name": "tiny-flaky", "target": {"model": models[0]}, "drafter": {"type": "flaky"},
            "sampling": {"temperature": 0, "max_new_tokens": MAX_TOKENS}, "scheduler": {"max_batch_size": 4}}


@pytest.fixture(scope="module")
def flaky_server(models):
    running = Running(Pipeline.from_dict(flaky_data(models), plugins=flaky_plugins()))
    yield running
    running.close()


def ask(running: Running, prompt: str, *, chat: bool, stream: bool, **extra):
    """(text, finish_reason, usage) of one request through the openai client."""
    client, model = running.client, running.model
    usage = None
    if chat:
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            answer = client.chat.completions.create(model=model, messages=messages, **extra)
            return answer.choices[0].message.content, answer.choices[0].finish_reason, answer.usage
        pieces, finish = [], None
        for chunk in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                    stream_options={"include_usage": True}, **extra):
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        return "".join(pieces), finish, usage
    if not stream:
        answer = client.completions.create(model=model, prompt=prompt, **extra)
        return answer.choices[0].text, answer.choices[0].finish_reason, answer.usage
    pieces, finish = [], None
    for chunk in client.completions.create(model=model, prompt=prompt, stream=True,
                                           stream_options={"include_usage": True}, **extra):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
    return "".join(pieces), finish, usage


def wait_for(condition, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the plugin ----------------------------------------------------------------------------------


def test_specdec_finds_the_installed_plugin_and_its_command():
    check_plugin("specdec_plugin_serve", distribution="specdec-plugin-serve", commands=True)


def test_models_health_and_metrics(spec_server):
    models = spec_server.client.models.list().data
    assert [model.id for model in models] == ["tiny-spec"]
    assert httpx.get(f"{spec_server.url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{spec_server.url}/metrics").text
    assert 'specdec:num_requests_running{model_name="tiny-spec"}' in text


# -- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_greedy_answers_equal_offline_generate(spec_server, offline, chat, stream):
    for prompt in PROMPTS[:3]:
        expected = offline(prompt, chat)
        text, finish, usage = ask(spec_server, prompt, chat=chat, stream=stream)
        assert text == expected.text and finish == expected.finish_reason
        assert (usage.prompt_tokens, usage.completion_tokens) == (len(expected.prompt_token_ids),
                                                                 len(expected.token_ids))


def test_speculation_per_request_changes_the_speed_not_the_text(spec_server, offline):
    before = {drafter: spec_server.metric("specdec:num_steps_total", drafter=drafter)
              for drafter in ("none", "draft_model")}
    expected = offline(PROMPTS[0], False)
    for speculation in ({"enabled": False}, {"params": {"num_tokens": 1}}, {"max_draft_tokens": 2}, {}):
        text, _, _ = ask(spec_server, PROMPTS[0], chat=False, stream=False, extra_body={"speculation": speculation})
        assert text == expected.text, speculation
    plain_steps = spec_server.metric("specdec:num_steps_total", drafter="none") - before["none"]
    assert plain_steps == len(expected.token_ids)  # speculation off: one token per step
    assert spec_server.metric("specdec:spec_decode_num_accepted_tokens_total", drafter="draft_model") > 0
    assert spec_server.metric("specdec:spec_decode_mean_accepted_tokens", drafter="draft_model") > 1.0


def test_stop_strings_max_tokens_and_sampling_overrides(spec_server, offline):
    expected = offline(PROMPTS[1], False)
    stop = expected.text[4:7]
    for stream in (False, True):
        text, finish, _ = ask(spec_server, PROMPTS[1], chat=False, stream=stream, stop=[stop, "never"])
        assert text == expected.text[: expected.text.index(stop)] and finish == "stop"
        text, finish, usage = ask(spec_server, PROMPTS[1], chat=False, stream=stream, max_tokens=5)
        assert (text, finish, usage.completion_tokens) == (offline(PROMPTS[1], False, max_new_tokens=5).text, "length", 5)
    sampled = [ask(spec_server, PROMPTS[2], chat=True, stream=False, temperature=1.0, top_p=0.9, seed=7)[0]
               for _ in range(2)]
    assert sampled[0] == sampled[1] == offline(PROMPTS[2], True, temperature=1.0, top_p=0.9, seed=7).text


def test_32_concurrent_clients_all_get_their_own_complete_answers(spec_server, offline):
    jobs = [(PROMPTS[index % len(PROMPTS)], bool(index % 2), bool(index // 2 % 2),
             {"speculation": {"enabled": False}} if index % 5 == 0 else None) for index in range(32)]

    def run(job):
        prompt, chat, stream, extra_body = job
        return ask(spec_server, prompt, chat=chat, stream=stream, extra_body=extra_body)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(run, jobs, timeout=120))
    for (prompt, chat, _, _), (text, finish, usage) in zip(jobs, answers):
        expected = offline(prompt, chat)
        assert (text, finish, usage.completion_tokens) == (expected.text, expected.finish_reason,
                                                           len(expected.token_ids))
    assert spec_server.metric("specdec:num_requests_running") == 0


def test_the_load_script_measures_both_modes_at_each_concurrency(spec_server, tmp_path):
    from specdec_plugin_serve import loadtest

    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": index, "category": category, "turns": [prompt, "more"]})
                                   for index, (category, prompt) in enumerate(
                                       [("qa", PROMPTS[0]), ("qa", PROMPTS[1]), ("writing", PROMPTS[2]),
                                        ("translation", PROMPTS[3])])))
    assert loadtest.main(["--url", spec_server.url, "-q", str(questions), "--limit", "1", "-c", "1", "3",
                          "-n", "6", "-o", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {(row["concurrency"], row["mode"]): row for row in results["rows"]}
    assert sorted(rows) == [(1, "off"), (1, "on"), (3, "off"), (3, "on")]
    assert [row["requests"] for row in results["rows"]] == [4, 4, 12, 12]  # 3 tasks; at least 4C requests
    sent = sorted((record["sent"], record["mode"]) for record in results["records"] if record["concurrency"] == 1)
    assert [mode for _, mode in sent] == ["on", "on", "off", "off", "off", "off", "on", "on"]  # blocks of 2C
    blocks = [(block["concurrency"], block["mode"], block["requests"]) for block in results["blocks"]]
    assert blocks[:4] == [(1, "on", 2), (1, "off", 2), (1, "off", 2), (1, "on", 2)]
    for (concurrency, mode), row in rows.items():
        assert sum(block["tokens"] for block in results["blocks"]
                   if (block["concurrency"], block["mode"]) == (concurrency, mode)) == row["tokens"]
    assert all(row["errors"] == 0 and row["tokens"] > 0 and row["ttft_p50"] > 0 for row in rows.values())
    assert rows[1, "off"]["mean_accepted_tokens"] == 1.0 and rows[1, "on"]["mean_accepted_tokens"] > 1.0
    assert 0 <= rows[1, "off"]["draft_ms_per_token"] < rows[1, "on"]["draft_ms_per_token"]  # off: start() only
    assert all(0 < row["server_share"] < 1 for row in rows.values())
    assert results["differ"] == {"1": [0, 4], "3": [0, 12]}
    assert "| 3 | on | 12 |" in (tmp_path / "out" / "report.md").read_text()


def test_the_load_script_compares_the_server_with_the_same_pipeline_offline(spec_server, models, tmp_path, capsys):
    from specdec_plugin_serve import loadtest

    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": index, "category": "qa", "turns": [prompt]})
                                   for index, prompt in enumerate(PROMPTS[:2])))
    pipeline_file = tmp_path / "pipeline.yaml"
    pipeline_file.write_text(json.dumps(spec_data(models)))  # JSON is YAML
    assert loadtest.main(["--url", spec_server.url, "-q", str(questions), "--offline", str(pipeline_file),
                          "-n", "8", "-o", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["overhead"]
    assert [(row["mode"], row["requests"]) for row in rows] == [("on", 2), ("off", 2)]
    assert all(row["server_tokens_per_s"] > 0 and row["offline_tokens_per_s"] > 0 for row in rows)
    assert "differs" not in capsys.readouterr().err


# -- faults and disconnects ------------------------------------------------------------------------


def test_a_drafter_that_raises_fails_its_request_and_no_other(flaky_server, models):
    offline = Pipeline.from_dict(flaky_data(models), plugins=flaky_plugins())
    failing = {"speculation": {"params": {"fail_at_step": 2, "delay": 0.01}}}
    slow = {"speculation": {"params": {"delay": 0.01}}}  # keeps them in the batch with the failing ones
    jobs = [(PROMPTS[0], False, False, failing), (PROMPTS[1], True, True, failing),
            (PROMPTS[2], False, True, slow), (PROMPTS[3], True, False, slow)]

    def run(job):
        prompt, chat, stream, extra_body = job
        try:
            return ask(flaky_server, prompt, chat=chat, stream=stream, extra_body=extra_body)
        except openai.APIError as error:
            return error

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(run, jobs, timeout=60))
    whole, streamed = answers[:2]
    assert isinstance(whole, openai.InternalServerError) and whole.body["code"] == "generation_failed"
    assert "the flaky drafter failed on purpose" in whole.body["message"]
    assert isinstance(streamed, openai.APIError) and streamed.body["code"] == "generation_failed"
    for (prompt, chat, _, _), answer in zip(jobs[2:], answers[2:]):
        expected = offline.generate([{"role": "user", "content": prompt}] if chat else prompt)
        assert answer[:2] == (expected.text, expected.finish_reason)
    assert flaky_server.metric("specdec:request_success_total", finished_reason="error") == 2
    assert ask(flaky_server, PROMPTS[4], chat=False, stream=False)[0] == offline.generate(PROMPTS[4]).text


def test_a_client_killed_mid_stream_frees_its_slot(flaky_server):
    """A request that would run for about 20 s (400 steps of 50 ms) is gone once its client is."""
    aborted = flaky_server.metric("specdec:request_success_total", finished_reason="abort")
    body = {"model": flaky_server.model, "prompt": "hello", "max_tokens": 400, "stream": True,
            "speculation": {"params": {"delay": 0.05}}}
    with httpx.stream("POST", f"{flaky_server.url}/v1/completions", json=body, timeout=30) as response:
        received = 0
        for line in response.iter_lines():
            received += line.startswith("data: {")
            if received == 3:
                break  # leaving the block closes the connection mid-stream
    wait_for(lambda: flaky_server.metric("specdec:request_success_total", finished_reason="abort") == aborted + 1,
             timeout=5, what="the server to cancel the request")
    assert flaky_server.metric("specdec:num_requests_running") == 0
    body["stream"] = False  # a client that gives up waiting for a whole answer, too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{flaky_server.url}/v1/completions", json=body, timeout=0.5)
    wait_for(lambda: flaky_server.metric("specdec:request_success_total", finished_reason="abort") == aborted + 2,
             timeout=5, what="the server to cancel the request")
    assert ask(flaky_server, "hello", chat=False, stream=True, max_tokens=3)[1] == "length"


# -- bad requests -----------------------------------------------------------------------------------

LONG = "a" * 600  # more characters (tokens) than the tiny model's 512 positions
DROP = object()  # a field left out of the body

BAD_REQUESTS = [
    # (endpoint, body, status, param, code, words in the message)
    ("completions", b'{"model": "tiny-spec", "prompt": ', 400, None, "invalid_json", "not valid JSON"),
    ("completions", b"", 400, None, "invalid_json", "empty"),
    ("completions", b"[1, 2]", 400, None, None, "must be a JSON object"),
    ("completions", {"prompt": "hi", "model": DROP}, 400, "model", None, "required field is missing"),
    ("completions", {"prompt": "hi", "temprature": 0.5}, 400, "temprature", None, "did you mean 'temperature'"),
    ("completions", {"prompt": "hi", "temperature": 3}, 400, "temperature", None, "must be <= 2"),
    ("completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", None, "must be >= 1"),
    ("completions", {"prompt": "hi", "n": 2}, 400, "n", None, "only n = 1"),
    ("completions", {"prompt": ["hi", "there"]}, 400, "prompt", None, "one prompt per request"),
    ("completions", {"prompt": "hi", "stop": 5}, 400, "stop", None, "a string or a list of strings"),
    ("completions", {"prompt": "hi", "presence_penalty": 0.5}, 400, "presence_penalty", None, "not supported"),
    ("completions", {"prompt": ""}, 400, "prompt", None, "the prompt is empty"),
    ("completions", {"prompt": LONG}, 400, "prompt", "context_length_exceeded", "shorten the prompt"),
    ("completions", {"prompt": [1, 2, 99999]}, 400, "prompt", None, "outside the model vocabulary"),
    ("completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model", "model_not_found", "serves 'tiny-spec'"),
    ("completions", {"prompt": "hi", "speculation": {"params": {"num_tokens": 100}}}, 400,
     "speculation.params.num_tokens", None, "must be <= 64"),
    ("completions", {"prompt": "hi", "speculation": {"params": {"num_token": 2}}}, 400,
     "speculation.params.num_token", None, "did you mean 'num_tokens'"),
    ("completions", {"prompt": "hi", "speculation": {"params": {"model": "/elsewhere"}}}, 400,
     "speculation.params.model", None, "may change: num_tokens, greedy_draft"),
    ("completions", {"prompt": "hi", "speculation": {"enabled": False, "params": {"num_tokens": 2}}}, 400,
     "speculation", None, "do nothing with enabled: false"),
    ("completions", {"prompt": "hi", "speculation": {"enable": False}}, 400, "speculation.enable", None,
     "did you mean 'enabled'"),
    ("completions", {"prompt": "hi", "speculation": {"max_draft_tokens": -1}}, 400,
     "speculation.max_draft_tokens", None, "must be >= 0"),
    ("chat/completions", {"messages": []}, 400, "messages", None, "at least one message"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages[0].content", None, "part 0 is not a text part (type 'image_url')"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                          "max_completion_tokens": 0}, 400, "max_completion_tokens", None, "must be >= 1"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", None,
     "must be one of"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs",
     None, "not supported"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": []}, 400, "tools", None,
     "unknown field"),
]


@pytest.mark.parametrize("endpoint,body,status,param,code,words", BAD_REQUESTS,
                         ids=[f"{index}-{case[3]}" for index, case in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_an_openai_error_naming_the_problem(spec_server, endpoint, body, status, param, code, words):
    if isinstance(body, dict):
        body = json.dumps({key: value for key, value in {"model": "tiny-spec", **body}.items()
                           if value is not DROP}).encode()
    response = httpx.post(f"{spec_server.url}/v1/{endpoint}", content=body, timeout=10,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert words in error["message"]


def test_the_openai_client_raises_bad_request_with_the_body(spec_server):
    with pytest.raises(openai.BadRequestError) as raised:
        spec_server.client.completions.create(model="tiny-spec", prompt="hi", temperature=3)
    assert raised.value.body["param"] == "temperature" and "must be <= 2" in raised.value.body["message"]
    assert httpx.get(f"{spec_server.url}/v2/nothing").json()["error"]["message"].startswith("no route GET /v2/nothing")


def test_max_model_len_bounds_each_request_and_the_prepared_cache_never_grows(models):
    """A server for requests of at most 40 tokens: a longer prompt gets a 400 naming the limit, a
    longer completion ends at the limit with finish_reason "length", and decoding never grows the
    cache that `prepare` allocated at start (a growth stalls the whole batch)."""
    data = spec_data(models)
    pipeline = Pipeline.from_dict({**data, "name": "tiny-40", "sampling": {**data["sampling"], "stop_token_ids": []}})
    pipeline.scheduler.prepare(pipeline.scheduler.max_batch_size, 40)
    cache = pipeline.scheduler.verifier.cache
    buffer = cache.buffer
    running = Running(pipeline, max_model_len=40)
    try:
        assert running.client.models.list().data[0].model_extra["max_model_len"] == 40
        with pytest.raises(openai.BadRequestError) as raised:
            running.client.completions.create(model="tiny-40", prompt="b" * 45)
        assert raised.value.body["code"] == "context_length_exceeded"
        assert "--max-model-len" in raised.value.body["message"] and "at most 40" in raised.value.body["message"]
        prompt = "abc abc abc"
        prompt_tokens = len(pipeline.encode(prompt))
        answers = [ask(running, prompt, chat=False, stream=stream, max_tokens=100) for stream in (False, True)]
        for text, finish, usage in answers:
            assert finish == "length"
            assert usage.prompt_tokens == prompt_tokens and usage.completion_tokens == 40 - prompt_tokens
        assert cache.buffer is buffer
    finally:
        running.close()


# -- shutdown ---------------------------------------------------------------------------------------


def test_shutdown_answers_every_request_in_flight(models):
    """After the grace period the requests still running end with a 503 error (their clients get
    an answer, not a broken connection); the server stops."""
    running = Running(Pipeline.from_dict(flaky_data(models), plugins=flaky_plugins()), shutdown_timeout=0.3)
    body = {"model": running.model, "prompt": "hello", "max_tokens": 400, "stream": True,
            "speculation": {"params": {"delay": 0.05}}}
    events = []
    with httpx.stream("POST", f"{running.url}/v1/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                if len(events) == 2:
                    threading.Thread(target=running.close).start()
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "shutting_down"
    wait_for(lambda: not running.thread.is_alive(), timeout=10, what="the server to stop")


def start_cli_server(tmp_path: Path, models, name: str, server_url) -> tuple[subprocess.Popen, str]:
    """`specdec serve` in a subprocess on a free port; returns it and its URL once it answers."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntarget: {{model: {models[0]}}}\nsampling: {{max_new_tokens: 200}}\n")
    process = subprocess.Popen([sys.executable, "-m", "specdec.cli", "serve", str(path), "--port", "0",
                                "--log-level", "warning"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SPECDEC_LOAD_PLUGINS": "specdec_plugin_serve"})
    return process, server_url(process, timeout=80)


def test_sigterm_and_sigint_stop_the_cli_server_cleanly_after_the_requests_in_flight(tmp_path, models, server_url):
    servers = {sig: start_cli_server(tmp_path, models, f"cli-{sig.name.lower()}", server_url)
               for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig, (process, url) in servers.items():
        body = {"model": f"cli-{sig.name.lower()}", "prompt": "hello", "max_tokens": 200, "stream": True}
        events = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    if len(events) == 1:
                        process.send_signal(sig)
        assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] in ("stop", "length")
        stderr = process.communicate(timeout=30)[1]
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)


class DriverKilled(BaseException):
    """Not an `Exception`: no request's error handling catches it, so it ends the driver."""


class ThreadRecorder(BaseDrafter):
    """Drafts the last two tokens again and records the thread that drafts; `tag: crash` raises
    `DriverKilled` instead."""

    threads: list[str] = []

    def __init__(self, params: FlakyParams):
        self.params = params

    def propose(self, context):
        ThreadRecorder.threads.append(threading.current_thread().name)
        if self.params.tag == "crash":
            raise DriverKilled()
        return Draft.chain(list(context.tokens[-2:]))


def serve_here(models, tag: str, client) -> int:
    """`server.serve` on this (the main) thread as `specdec serve` runs it, while `client(url)`
    runs in another thread; returns serve's exit status."""
    from specdec_plugin_serve.server import serve

    module = types.ModuleType("thread_recorder")
    module.register_drafters = hookimpl(lambda register: register(
        "recorder", FlakyParams, lambda context, params: ThreadRecorder(params)))
    data = {"target": {"model": models[0]}, "drafter": {"type": "recorder", "params": {"tag": tag}},
            "sampling": {"temperature": 0, "max_new_tokens": 8}}
    pipeline = Pipeline.from_dict(data, plugins=load_plugins([("thread_recorder", module)], entry_points=False))
    listener = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    errors = []

    def run_client():
        try:
            wait_for(lambda: _answers(url), what="the server to start")
            client(url)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=run_client)
    thread.start()
    code = serve(pipeline, listener, model_name="recorder", shutdown_timeout=2.0, log_level="warning")
    thread.join(30)
    assert not errors, errors
    return code


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_decodes_on_the_main_thread_and_exits_1_when_its_driver_dies(models):
    """torch runs at full speed only on the thread that loaded the model (docs/serving.md, How it
    works): `specdec serve` drives the scheduler from the main thread, HTTP in another."""
    def ask_then_interrupt(url):
        body = {"model": "recorder", "prompt": "abc abc abc", "max_tokens": 8}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: serve stops cleanly and returns 0

    ThreadRecorder.threads.clear()
    assert serve_here(models, "x", ask_then_interrupt) == 0
    assert ThreadRecorder.threads and set(ThreadRecorder.threads) == {threading.main_thread().name}

    def ask_into_a_crash(url):
        body = {"model": "recorder", "prompt": "abc abc abc", "max_tokens": 8}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()["error"]["code"] == "shutting_down"

    assert serve_here(models, "crash", ask_into_a_crash) == 1  # no signal: the dead driver ends the server


def test_cli_errors_come_before_the_model_loads(tmp_path, models, capsys):
    assert main(["serve", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read pipeline file" in capsys.readouterr().err
    busy = bind("127.0.0.1", 0)
    path = tmp_path / "p.yaml"
    path.write_text(f"target: {{model: {models[0]}}}\n")
    try:
        assert main(["serve", str(path), "--port", str(busy.getsockname()[1])]) == 2
    finally:
        busy.close()
    assert "is in use" in capsys.readouterr().err
    assert main(["serve", str(path), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", str(path), "--max-model-len", "1"]) == 2
    assert "--max-model-len must be >= 2" in capsys.readouterr().err
    assert main(["serve", str(path), "--port", "0", "--max-model-len", "100000"]) == 2  # known once loaded
    assert "the model attends over at most 512 positions" in capsys.readouterr().err
