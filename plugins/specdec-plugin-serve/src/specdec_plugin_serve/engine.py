"""The bridge between the HTTP handlers (one asyncio event loop) and the step scheduler.

One driver owns the scheduler: it submits queued requests between steps, calls
`StepScheduler.step()` while there is work, and after each step hands every request's new
tokens to its handler (`loop.call_soon_threadsafe`, one call per step). Handlers never take the
scheduler's lock, so the event loop never waits for a step:

    handler --submit--> inbox --(driver, between steps)--> scheduler.submit
    driver: step() -> SequenceHandle.chunks -> per-request asyncio.Queue -> handler -> SSE / JSON

A request is cancelled by flagging its handle (`SequenceHandle.cancelled`); the scheduler drops
it and frees its slot at the next step, as it does for an abandoned `Generation`.

Shutting down: `drain()` refuses new requests and ends every request in flight with a 503 error
(its handler still answers it, so its connection closes cleanly); `stop()` ends the driver.

The driver runs in a thread of its own, or (`own_thread=False`, as `specdec serve` does) in the
thread that calls `drive()`: the main thread, with the HTTP server in another. On a CPU that
matters: torch's OpenMP workers spin between parallel regions only while the process has no more
of them than cores, and the main thread, which loaded the model, keeps its own team; a second
thread doing torch work adds a second team, and then every worker sleeps between operations
(measured in docs/benchmarks.md, "Serving under load (CPU)").

With a tensor-parallel target (`control` given) the driver also sends every loop's changes to
the scheduler to the other ranks (specdec_plugin_serve.tensor_parallel), and cancellations are
applied by the driver at the loop's start instead of flagged for the next step, so that no
cancellation lands between the tick and the step on rank 0 alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from specdec import InputError, SamplingParams, SequenceHandle

from specdec_plugin_serve.metrics import Metrics
from specdec_plugin_serve.protocol import ApiError
from specdec_plugin_serve.tensor_parallel import Tick, seeded

logger = logging.getLogger("specdec.serve")



def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down: the request was not finished; retry on another server "
                         "or after the restart", code="shutting_down")


@dataclass
class _Pending:
    """A request waiting in the inbox for the driver to submit it."""

    prompt: list[int]
    params: SamplingParams
    max_draft_tokens: int | None
    drafter: Any
    label: str
    future: asyncio.Future


@dataclass
class _Tracked:
    """The driver's record of a submitted request: where its tokens go, and its metrics so far."""

    queue: asyncio.Queue
    label: str  # the drafter, for metrics ("none" when speculation is off)
    arrived: float
    last_token: float | None = None
    seen: dict = field(default_factory=dict)  # the stats already counted in the metrics


class Submission:
    """One request in flight: iterate `events()` for ("tokens", [ids]), then ("done", result) or
    ("error", exception); `cancel()` when its client has gone."""

    def __init__(self, engine: "Engine", handle: SequenceHandle, queue: asyncio.Queue):
        self.engine = engine
        self.handle = handle
        self._queue = queue

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        while True:
            kind, value = await self._queue.get()
            yield kind, value
            if kind != "tokens":
                return

    def cancel(self) -> None:
        self.engine.cancel(self.handle)


class Engine:
    """Runs a pipeline's scheduler in one driver for the requests of an event loop.

    :param pipeline: a built `specdec.Pipeline`; its scheduler must not be driven by anyone else.
    :param metrics: where to count requests, tokens, acceptance and latencies (None: nowhere).
    :param own_thread: `start()` starts the driver in a thread of its own; with False, the thread
        that calls `drive()` runs it (after `start()`; see the module docstring for why).
    """

    def __init__(self, pipeline, metrics: Metrics | None = None, control=None, *, own_thread: bool = True):
        self.pipeline = pipeline
        self.control = control  # a tensor_parallel.Control on rank 0 of a tensor-parallel target
        self._cancels: list[SequenceHandle] = []  # with `control`: cancelled since the last loop
        self.scheduler = pipeline.scheduler
        self.metrics = metrics
        self._wake = threading.Condition()
        self._inbox: list[_Pending] = []
        self._dirty = False
        self._draining = False  # no new requests; those in flight are failed with a 503
        self._abort = False  # the driver should fail the requests in flight
        self._stopping = False  # the driver should end
        self._tracked: dict[SequenceHandle, _Tracked] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_thread = own_thread
        self._thread: threading.Thread | None = None
        self._started = threading.Event()  # the event loop called start(): requests may come
        self._ended = threading.Event()  # the driver returned
        self.crashed: BaseException | None = None

    # -- lifecycle (event loop side) ------------------------------------------------------------

    def start(self) -> None:
        """Start serving; call from the event loop that will submit requests. With `own_thread`
        this starts the driver thread, else `drive()` may begin."""
        self._loop = asyncio.get_running_loop()
        self._started.set()
        if self._own_thread:
            self._thread = threading.Thread(target=self.drive, name="specdec-driver", daemon=True)
            self._thread.start()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until the event loop has called `start()` (True), or `timeout` seconds (False)."""
        return self._started.wait(timeout)

    def drain(self) -> None:
        """Refuse new requests and end those in flight with a 503 error (thread-safe)."""
        with self._wake:
            self._draining = self._abort = True
            self._wake.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every request still in flight (its handler gets a 503 error) and end the thread."""
        with self._wake:
            self._draining = self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._started.is_set():  # the caller of drive() ends it
            self._ended.wait(timeout)

    @property
    def alive(self) -> bool:
        """Whether new requests are taken (started, and the driver has neither ended nor begun to stop)."""
        return self._started.is_set() and not self._ended.is_set() and not self._draining

    # -- requests (event loop side) -------------------------------------------------------------

    async def submit(self, prompt: list[int], params: SamplingParams, *, max_draft_tokens: int | None = None,
                     drafter: Any = None, label: str = "") -> Submission:
        """Queue a request; returns once the driver has submitted it (within one step).

        Raises `InputError` for a prompt the scheduler refuses, `ApiError` (503) when stopping.
        """
        if not self.alive:
            raise _shutting_down()
        future = self._loop.create_future()
        with self._wake:
            self._inbox.append(_Pending(prompt, params, max_draft_tokens, drafter, label, future))
            self._wake.notify()
        handle, queue = await future  # cancelled with its client: `_resolve` then cancels the handle
        return Submission(self, handle, queue)

    def cancel(self, handle: SequenceHandle) -> None:
        """Stop a request: the scheduler frees its slot at the next step (no-op once it is done)."""
        if handle.done:
            return
        with self._wake:
            if self.control is None:
                handle.cancelled = True
            else:
                self._cancels.append(handle)
            self._dirty = True
            self._wake.notify()

    # -- the driver ------------------------------------------------------------------------------

    def drive(self) -> None:
        """Run the driver in the calling thread until `stop()` (after `start()`; with
        `own_thread`, the engine's thread calls it). Returns when the driver ends, also after a
        fault (`crashed` then holds it)."""
        if not self._started.is_set():
            raise RuntimeError("Engine.drive() before Engine.start(): start the application first")
        try:
            self._run()
        finally:
            self._ended.set()

    def _run(self) -> None:
        scheduler = self.scheduler
        control = self.control
        stopped = False
        try:
            while True:
                with self._wake:
                    while not (self._stopping or self._abort or self._inbox or self._dirty or scheduler.has_work):
                        if not self._wake.wait(control.heartbeat if control else None):
                            break  # a quiet tensor-parallel server: an empty tick tells the ranks it is alive
                    inbox, self._inbox = self._inbox, []
                    cancels, self._cancels = self._cancels, []
                    self._dirty = False
                    draining, abort, stopping = self._draining, self._abort, self._stopping
                    self._abort = False
                if control is not None:
                    inbox = self._tick(control, inbox, cancels, draining, abort, stopping)
                    stopped = stopping
                self._admit(inbox, draining)
                if abort:
                    self._fail_all(_shutting_down())
                if stopping:
                    break
                if scheduler.has_work:
                    try:
                        scheduler.step()
                    except Exception as error:  # noqa: BLE001 - a fault outside any one sequence
                        logger.exception("a scheduler step failed; failing the requests in flight")
                        self._fail_all(ApiError(500, f"the decoding step failed: {type(error).__name__}: {error}"))
                self._dispatch()
        except BaseException as error:  # noqa: BLE001 - the driver must never die silently
            self.crashed = error
            logger.exception("the decoding driver stopped")
            self._draining = self._stopping = True
        finally:
            self._fail_all(_shutting_down())
            if control is not None and not stopped:
                try:  # the other ranks must not wait for a tick that never comes
                    control.send(Tick(stop=True))
                except Exception:  # noqa: BLE001 - they then fail on the collective timeout
                    logger.exception("telling the other ranks to stop failed")

    def _tick(self, control, inbox: list[_Pending], cancels: list[SequenceHandle], draining: bool, abort: bool,
              stopping: bool) -> list[_Pending]:
        """Apply this loop's cancellations, seed the new requests and send both to the other ranks,
        which apply the same (see tensor_parallel.follow). :returns: the seeded inbox."""
        for handle in cancels:
            self.scheduler.cancel(handle)
        for pending in inbox:
            pending.params = seeded(pending.params)
        submits = [] if draining else [(pending.prompt, pending.params, pending.max_draft_tokens)
                                       for pending in inbox]
        control.send(Tick([handle.request_id for handle in cancels], submits, abort, stopping))
        return inbox

    def _admit(self, inbox: list[_Pending], draining: bool) -> None:
        """Submit the inbox's requests (the driver holds no step now, so no lock waits)."""
        for pending in inbox:
            if draining:
                self._resolve(pending.future, error=_shutting_down())
                continue
            try:
                handle = self.scheduler.submit(pending.prompt, pending.params,
                                               max_draft_tokens=pending.max_draft_tokens, drafter=pending.drafter)
            except InputError as error:
                self._resolve(pending.future, error=error)
                continue
            queue = asyncio.Queue()
            self._tracked[handle] = _Tracked(queue, pending.label, time.perf_counter())
            if self.metrics is not None:
                self.metrics.request_started(len(pending.prompt))
            self._resolve(pending.future, value=(handle, queue))

    def _resolve(self, future: asyncio.Future, value: Any = None, error: BaseException | None = None) -> None:
        def settle():
            if future.cancelled():  # the client left before the driver took its request
                if value is not None:
                    self.cancel(value[0])
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        self._loop.call_soon_threadsafe(settle)

    def _dispatch(self) -> None:
        """Hand each request its new tokens (and its end), all in one call into the event loop."""
        deliveries: list[tuple[asyncio.Queue, list[tuple[str, Any]]]] = []
        now = time.perf_counter()
        for handle, tracked in list(self._tracked.items()):
            tokens: list[int] = []
            while handle.chunks:
                tokens.extend(handle.chunks.popleft())
            events: list[tuple[str, Any]] = []
            if tokens:
                events.append(("tokens", tokens))
            if self.metrics is not None and (tokens or handle.done):
                self.metrics.observe(tracked, handle.stats, len(tokens), now)
            if tokens:
                tracked.last_token = now
            if handle.done:
                del self._tracked[handle]
                if handle.error is not None:
                    events.append(("error", handle.error))
                    reason = "error"
                else:
                    events.append(("done", handle.result))
                    reason = handle.result.finish_reason
                if self.metrics is not None:
                    self.metrics.request_finished(tracked, reason, now, handle)
            if events:
                deliveries.append((tracked.queue, events))
        if self.metrics is not None:
            self.metrics.set_load(self.scheduler.num_active, self.scheduler.num_waiting)
        if deliveries:
            self._loop.call_soon_threadsafe(_deliver, deliveries)

    def _fail_all(self, error: ApiError) -> None:
        """End every request in flight with `error` (they are cancelled in the scheduler)."""
        with self._wake:
            inbox, self._inbox = self._inbox, []
        for pending in inbox:
            self._resolve(pending.future, error=error)
        if not self._tracked:
            return
        for handle in list(self._tracked):
            try:
                self.scheduler.cancel(handle)
            except Exception:  # noqa: BLE001 - the scheduler may be what failed; the handlers must still hear
                logger.exception("cancelling request %s failed", handle.request_id)
        deliveries = []
        now = time.perf_counter()
        for handle, tracked in self._tracked.items():
            deliveries.append((tracked.queue, [("error", error)]))
            if self.metrics is not None:
                self.metrics.request_finished(tracked, "abort", now)
        self._tracked.clear()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_deliver, deliveries)


def _deliver(deliveries: list[tuple[asyncio.Queue, list[tuple[str, Any]]]]) -> None:
    for queue, events in deliveries:
        for event in events:
            queue.put_nowait(event)
