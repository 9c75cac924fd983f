"""Running the application: a listening socket bound before the model loads, and uvicorn's server
made to exit cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
import threading
from typing import Callable

import uvicorn

from specdec import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a `ConfigError` saying why not and what to do."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ConfigError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another server?); pass another --port, "
                              f"or --port 0 for a free one") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    listener.listen(2048)
    return listener


class CleanExitServer(uvicorn.Server):
    """uvicorn's server with specdec's shutdown: on SIGINT or SIGTERM it stops accepting
    connections, lets the requests in flight run for up to `grace` seconds, then calls `drain`
    (which ends the rest with a 503 error, so every client gets an answer), and `run()` returns
    normally. (uvicorn itself re-raises the signal after shutting down, so the process would end
    by the signal instead of exiting 0.) A second SIGINT forces the exit."""

    def __init__(self, config: uvicorn.Config, *, grace: float, drain: Callable[[], None]):
        super().__init__(config)
        self.grace = grace
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # whoever runs the main thread hands the signals over (`serve`: `signals_to`)
            return
        with signals_to(self):
            yield

    async def shutdown(self, sockets=None) -> None:
        timer = asyncio.get_running_loop().call_later(self.grace, self.drain)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def make_server(app, *, shutdown_timeout: float = 30.0, log_level: str = "info",
                access_log: bool = False) -> CleanExitServer:
    """The uvicorn server of an application from `create_app`."""
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                            # after the grace period `drain` answers every request; this only bounds a stuck client
                            timeout_graceful_shutdown=shutdown_timeout + 10.0)
    return CleanExitServer(config, grace=shutdown_timeout, drain=app.state.service.engine.drain)


def serve(pipeline, listener: socket.socket, *, model_name: str | None = None, shutdown_timeout: float = 30.0,
          log_level: str = "info", access_log: bool = False, control=None, max_model_len: int | None = None) -> int:
    """Serve `pipeline` on a bound socket until SIGINT/SIGTERM; 0 after a clean stop, 1 if the
    application could not start or its decoding driver died.

    The calling thread (the main thread) drives the scheduler and the HTTP server runs in another
    thread: torch computes at full speed only on the thread that loaded the model
    (specdec_plugin_serve.engine). SIGINT and SIGTERM reach the main thread and are handed to the
    HTTP server, which shuts down as `CleanExitServer` describes and then stops the driver.
    """
    from specdec_plugin_serve.app import create_app

    app = create_app(pipeline, model_name=model_name, control=control, own_thread=False, max_model_len=max_model_len)
    server = make_server(app, shutdown_timeout=shutdown_timeout, log_level=log_level, access_log=access_log)
    host, port = listener.getsockname()[:2]
    service = app.state.service
    engine = service.engine
    shown = f"[{host}]" if ":" in host else host
    print(f"specdec serve: '{service.model_name}' (drafter {service.drafter_type}, batches of up to "
          f"{pipeline.scheduler.max_batch_size}, {service.max_model_len} tokens per request{cache_size(pipeline)}) "
          f"on http://{shown}:{port}/v1; Ctrl-C stops it", file=sys.stderr, flush=True)
    http = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="specdec-http")
    with signals_to(server):
        http.start()
        while not engine.wait_started(0.1):
            if not http.is_alive():  # the application failed to start; uvicorn logged why
                break
        else:
            engine.drive()
            if engine.crashed is not None:  # requests would only get 503s: exit 1 for a supervisor to restart it
                server.should_exit = True
        while http.is_alive():
            http.join(0.1)  # in short waits, so that a second Ctrl-C is still handled
    if engine.crashed is not None:
        print(f"specdec: error: the decoding driver stopped: {engine.crashed}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


def cache_size(pipeline) -> str:
    """", KV cache S x C positions, N GB" for the startup line, or "" when the verifier has no
    allocated positional cache."""
    cache = getattr(pipeline.scheduler.verifier, "cache", None)
    if getattr(cache, "buffer", None) is None:
        return ""
    return f", KV cache {cache.num_slots} x {cache.capacity} positions, {cache.buffer.nbytes / 1e9:.2f} GB"


@contextlib.contextmanager
def signals_to(server: uvicorn.Server):
    """Hand SIGINT and SIGTERM to `server`'s `handle_exit` (call on the main thread: Python runs
    signal handlers only there), restoring the previous handlers after."""
    originals = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in originals.items():
            signal.signal(sig, handler)
