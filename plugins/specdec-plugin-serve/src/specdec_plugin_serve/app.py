"""The FastAPI application: OpenAI's completions and chat completions, models, health and metrics.

    app = create_app(Pipeline.from_yaml("pipeline.yaml"))     # then run it with uvicorn

Each request is parsed (`protocol`), encoded and given its sampling parameters and speculation in
a worker thread, then submitted to the one driver thread (`engine`), which decodes it together
with every other request in flight. Answers stream as server-sent events in OpenAI's chunk format
or come back whole. A client that disconnects cancels its request and frees its slot at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from specdec import ConfigError, InputError, SamplingParams, SpecdecError

from specdec_plugin_serve import protocol
from specdec_plugin_serve.engine import Engine, Submission
from specdec_plugin_serve.metrics import Metrics
from specdec_plugin_serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest

logger = logging.getLogger("specdec.serve")


@dataclass
class Prepared:
    """A request ready for the scheduler."""

    prompt: list[int]
    params: SamplingParams
    max_draft_tokens: int | None
    drafter: Any  # the request's own drafter (speculation params), or None
    label: str  # its drafter for metrics: the pipeline's drafter type, or "none"


class Service:
    """What the routes share: the pipeline, its engine and metrics, and the served model's name."""

    def __init__(self, pipeline, model_name: str | None = None, control=None, own_thread: bool = True,
                 max_model_len: int | None = None):
        self.pipeline = pipeline
        self.model_name = model_name or pipeline.config.label
        model_limit = pipeline.verifier.max_positions
        if max_model_len is not None and not 2 <= max_model_len <= model_limit:
            raise ConfigError(f"max_model_len must be between 2 and the model's {model_limit} positions, "
                              f"got {max_model_len}")
        #: prompt + completion tokens of one request (the cache is prepared for this many)
        self.max_model_len = model_limit if max_model_len is None else max_model_len
        self.metrics = Metrics(self.model_name)
        self.engine = Engine(pipeline, self.metrics, control, own_thread=own_thread)
        self.drafter_type = pipeline.config.spec.drafter.type
        self.tunable = protocol.tunable_fields(pipeline.drafter_component.params_model)

    # -- preparing a request (worker thread) ----------------------------------------------------

    def prepare(self, request: protocol.RequestBase, prompt: Any, prompt_field: str) -> Prepared:
        """Encode the prompt, apply sampling overrides and speculation; a 400 `ApiError` says what is wrong."""
        pipeline = self.pipeline
        try:
            ids = pipeline.encode(prompt)
        except InputError as error:
            raise ApiError(400, str(error), param=prompt_field) from None
        limit = self.max_model_len
        if len(ids) >= limit:
            holder = ("the model attends over" if limit == pipeline.verifier.max_positions
                      else "this server takes (its --max-model-len)")
            raise ApiError(400, f"the prompt has {len(ids)} tokens but {holder} at most {limit} "
                                f"(prompt and completion together); shorten the prompt",
                           param=prompt_field, code="context_length_exceeded")
        overrides = request.sampling_overrides()
        try:
            params = pipeline.params(**overrides)
        except InputError as error:
            param = "temperature" if "temperature" in str(error) and "temperature" in overrides else None
            raise ApiError(400, str(error), param=param) from None
        if len(ids) + params.max_new_tokens > limit:  # ends with finish_reason "length", as at the model's limit
            params = params.replace(max_new_tokens=limit - len(ids))
        max_draft_tokens, drafter, label = self._speculation(request.speculation)
        return Prepared(ids, params, max_draft_tokens, drafter, label)

    def _speculation(self, speculation: protocol.Speculation | None) -> tuple[int | None, Any, str]:
        """(max_draft_tokens, own drafter or None, metrics label) of a request's `speculation`."""
        if speculation is None:
            return None, None, self.drafter_type
        if not speculation.enabled:
            if speculation.params or speculation.max_draft_tokens:
                raise ApiError(400, "speculation: params and max_draft_tokens do nothing with enabled: false; "
                                    "send one or the other", param="speculation")
            return 0, None, "none"
        label = "none" if speculation.max_draft_tokens == 0 else self.drafter_type
        if not speculation.params:
            return speculation.max_draft_tokens, None, label
        if self.engine.control is not None:
            raise ApiError(400, "speculation.params: a tensor-parallel server runs the pipeline's own drafter on "
                                "every rank and cannot hand them a request's drafter; send max_draft_tokens or "
                                "enabled: false only", param="speculation.params")
        if self.drafter_type == "none":
            raise ApiError(400, "speculation.params: this server's pipeline has no drafter (drafter type 'none'), "
                                "so there are no drafter params to change", param="speculation.params")
        fields = self.pipeline.drafter_component.params_model.model_fields
        for name in speculation.params:
            if name in fields and name not in self.tunable:
                raise ApiError(400, f"speculation.params.{name}: set by the server's pipeline file and fixed for "
                                    f"requests (a request never makes the server load a model or read a path); "
                                    f"the {self.drafter_type} params a request may change: "
                                    f"{', '.join(self.tunable) or 'none'}", param=f"speculation.params.{name}")
        try:
            drafter = self.pipeline.drafter_with(speculation.params, location="speculation.params")
        except ConfigError as error:
            message = str(error)
            first = message.splitlines()[0]
            raise ApiError(400, message.replace("\n", "; "),
                           param=first.split(":")[0] if first.startswith("speculation") else "speculation.params") from None
        except SpecdecError as error:
            raise ApiError(400, f"speculation.params: {error}", param="speculation.params") from None
        return speculation.max_draft_tokens, drafter, label

    # -- answering (event loop) -----------------------------------------------------------------

    async def submit(self, request: protocol.RequestBase, prompt: Any, prompt_field: str) -> tuple[Submission, Prepared]:
        if request.model != self.model_name:
            raise ApiError(404, f"the model '{request.model}' is not served here; this server serves "
                                f"'{self.model_name}' (GET /v1/models)", param="model", code="model_not_found")
        prepared = await asyncio.to_thread(self.prepare, request, prompt, prompt_field)
        try:
            submission = await self.engine.submit(prepared.prompt, prepared.params,
                                                  max_draft_tokens=prepared.max_draft_tokens,
                                                  drafter=prepared.drafter, label=prepared.label)
        except InputError as error:
            raise ApiError(400, str(error), param=prompt_field) from None
        return submission, prepared

    async def answer(self, http: Request, request: protocol.RequestBase, prompt: Any, chat: bool) -> Response:
        submission, prepared = await self.submit(request, prompt, "messages" if chat else "prompt")
        rid = protocol.request_id("chatcmpl" if chat else "cmpl")
        created = protocol.now()
        if request.stream:
            events = self._stream(submission, prepared, request, rid, created, chat)
            return SSEResponse(events, on_close=submission.cancel)
        body = await _until_disconnected(http, self._collect(submission, prepared, rid, created, chat),
                                         on_disconnect=submission.cancel)
        return JSONResponse(body)

    async def _collect(self, submission: Submission, prepared: Prepared, rid: str, created: int, chat: bool) -> dict:
        text = self.pipeline.incremental_text(prepared.params)
        async for kind, value in submission.events():
            if kind == "tokens":
                text.tokens.extend(value)
            elif kind == "error":
                raise _as_api_error(value)
            else:
                use = protocol.usage(len(prepared.prompt), len(value.tokens))
                build = protocol.chat_completion if chat else protocol.completion
                return build(rid, created, self.model_name, text.text, value.finish_reason, use)
        raise ApiError(500, "the request ended without a result")

    async def _stream(self, submission: Submission, prepared: Prepared, request: protocol.RequestBase, rid: str,
                      created: int, chat: bool) -> AsyncIterator[str]:
        model, with_usage = self.model_name, request.include_usage
        text = self.pipeline.incremental_text(prepared.params)

        def chunk(piece: str, finish_reason: str | None = None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": piece} if first else ({"content": piece} if piece else {})
                return _sse(protocol.chat_chunk(rid, created, model, delta, finish_reason, with_usage))
            return _sse(protocol.completion_chunk(rid, created, model, piece, finish_reason, with_usage))

        if chat:
            yield chunk("", first=True)
        async for kind, value in submission.events():
            if kind == "tokens":
                piece = text.add(value)
                if piece:
                    yield chunk(piece)
            elif kind == "error":
                yield _sse(_as_api_error(value).body())
                yield "data: [DONE]\n\n"
                return
            else:
                piece = text.finish()
                if piece:
                    yield chunk(piece)
                yield chunk("", value.finish_reason)
                if with_usage:
                    use = protocol.usage(len(prepared.prompt), len(value.tokens))
                    yield _sse(protocol.usage_chunk(rid, created, model, "chat.completion.chunk" if chat
                                                    else "text_completion", use))
                yield "data: [DONE]\n\n"
                return


def _as_api_error(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    # a drafter or policy failed this request alone (the scheduler chains the cause)
    return ApiError(500, f"generation failed: {error}", code="generation_failed")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class SSEResponse(StreamingResponse):
    """Server-sent events from an async iterator of `data: ...` blocks. `on_close` runs when the
    response ends for any reason, at once when the client disconnects (even between events)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        listener = asyncio.ensure_future(_wait_for_disconnect(receive, self.on_close))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for data in self.events:
                await send({"type": "http.response.body", "body": data.encode("utf-8"), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we wrote to it
        finally:
            listener.cancel()
            self.on_close()
            await self.events.aclose()


async def _wait_for_disconnect(receive, on_disconnect: Callable[[], None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


async def _until_disconnected(http: Request, work, on_disconnect: Callable[[], None]) -> Any:
    """Run `work` unless the client disconnects first (then `on_disconnect`, and a 499 that nobody reads)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(http.receive, on_disconnect))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ApiError(499, "the client closed the connection", code="client_closed")


def create_app(pipeline, *, model_name: str | None = None, control=None, own_thread: bool = True,
               max_model_len: int | None = None) -> FastAPI:
    """The server's ASGI application for a built `specdec.Pipeline` (its scheduler is driven by
    the app's engine from startup to shutdown; do not generate with it meanwhile).

    :param model_name: the `model` clients send (default: the pipeline's name or file stem).
    :param control: on rank 0 of a tensor-parallel target, the tick channel to the other ranks
        (specdec_plugin_serve.tensor_parallel).
    :param own_thread: the engine drives the scheduler from a thread of its own; with False, call
        `app.state.service.engine.drive()` from the thread that should (see `server.serve`).
    :param max_model_len: most tokens of one request, prompt and completion together (default:
        the model's positions); longer prompts get a 400, longer completions end at the limit
        (finish_reason "length"). Prepare the scheduler's cache for it (`StepScheduler.prepare`).
    """
    service = Service(pipeline, model_name, control, own_thread, max_model_len)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.engine.stop)

    app = FastAPI(title="specdec serve", version=_version(), lifespan=lifespan,
                  description="OpenAI-compatible completions on a specdec speculative decoding pipeline")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}; this server answers POST "
                        f"/v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code, str(error.detail))
        return JSONResponse(ApiError(error.status_code, message).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return JSONResponse(ApiError(500, f"internal error: {type(error).__name__}: {error}").body(),
                            status_code=500)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = protocol.parse(CompletionRequest, await _json_body(request))
        return await service.answer(request, body, body.prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = protocol.parse(ChatCompletionRequest, await _json_body(request))
        if not getattr(pipeline.tokenizer, "chat_template", None):
            raise ApiError(400, "this model's tokenizer has no chat template; send the prompt as text to "
                                "POST /v1/completions", param="messages")
        messages = [{"role": message.role, "content": message.content} for message in body.messages]
        return await service.answer(request, body, messages, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": service.model_name, "object": "model", "created": protocol.now(), "owned_by": "specdec",
            "max_model_len": service.max_model_len, "drafter": service.drafter_type}]}

    @app.get("/health")
    async def health():
        if not service.engine.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except UnicodeDecodeError as error:
        raise ApiError(400, f"the request body is not UTF-8 (byte {error.start}); send UTF-8 JSON",
                       code="invalid_json") from None
    except json.JSONDecodeError as error:
        found = "empty" if not raw.strip() else f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        raise ApiError(400, f"the request body is {found}; send a JSON object", code="invalid_json") from None


def _version() -> str:
    from specdec_plugin_serve import __version__

    return __version__
