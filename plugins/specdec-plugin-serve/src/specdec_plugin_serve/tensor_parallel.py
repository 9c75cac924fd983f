"""Serving a tensor-parallel target: rank 0 answers HTTP, the other ranks follow its scheduler.

Requests reach rank 0 alone, but every rank must run the same scheduler steps (each step's
forward is collective). So before each step rank 0's driver sends the other ranks one `Tick`:
the requests it submitted and the requests it cancelled since the last one, and whether it is
aborting or stopping. Every rank applies a tick in the same order (cancel, submit, abort, stop,
then step if the scheduler has work), so their schedulers hold the same sequences in the same
slots and take the same decisions. Unseeded requests get their seed on rank 0, before the tick.

Ticks travel on a gloo group of their own. An idle server sends an empty tick every
`HEARTBEAT_S` seconds, so that a follower waiting for the next tick can tell a quiet rank 0 from
a dead one by the collective timeout (SPECDEC_TP_TIMEOUT).
"""

from __future__ import annotations

import datetime
import logging
import random
import signal
from dataclasses import dataclass, field

from specdec import InputError, SamplingParams

logger = logging.getLogger("specdec.serve")

#: Longest quiet between two ticks (seconds): well under the collective timeout's 600 s default.
HEARTBEAT_S = 30.0


@dataclass
class Tick:
    """What rank 0's driver did to its scheduler since the last tick, for the other ranks to repeat."""

    cancels: list[int] = field(default_factory=list)  # request ids, in the order rank 0 cancelled them
    submits: list[tuple[list[int], SamplingParams, int | None]] = field(default_factory=list)  # prompt, params, cap
    abort: bool = False  # cancel every request in flight
    stop: bool = False  # the server is stopping: end the loop


class Control:
    """The tick channel: a gloo group over every rank, created collectively (call on all ranks)."""

    def __init__(self, tp):
        import torch.distributed

        from specdec import collective_timeout_seconds

        self.tp = tp
        self.heartbeat = min(HEARTBEAT_S, collective_timeout_seconds() / 4)
        self.group = torch.distributed.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=collective_timeout_seconds()))

    def send(self, tick: Tick) -> None:
        """Rank 0: hand `tick` to the other ranks."""
        self._broadcast(tick)

    def receive(self) -> Tick:
        """Another rank: wait for rank 0's next tick."""
        return self._broadcast(None)

    def _broadcast(self, tick: Tick | None) -> Tick:
        import torch.distributed

        box = [tick]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


def seeded(params: SamplingParams) -> SamplingParams:
    """`params` with a seed: drawn here (rank 0) when the request brought none, so that every rank
    samples the same tokens for it."""
    if params.seed is not None:
        return params
    return params.replace(seed=random.SystemRandom().randrange(1 << 63))


def follow(pipeline, control: Control) -> int:
    """A rank other than 0: repeat rank 0's ticks on this rank's scheduler until it stops.

    SIGINT and SIGTERM are ignored here (torchrun sends them to every rank): rank 0 shuts the
    server down and its last tick ends this loop. If rank 0 dies instead, the next tick times out
    and this rank fails too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    scheduler = pipeline.scheduler
    handles = {}
    while True:
        tick = control.receive()
        for request_id in tick.cancels:
            handle = handles.pop(request_id, None)
            if handle is not None:
                scheduler.cancel(handle)
        for prompt, params, max_draft_tokens in tick.submits:
            try:
                handle = scheduler.submit(prompt, params, max_draft_tokens=max_draft_tokens)
            except InputError:
                continue  # rank 0 refused it the same way
            handles[handle.request_id] = handle
        if tick.abort or tick.stop:
            _cancel_all(scheduler, handles)
        if tick.stop:
            return 0
        if scheduler.has_work:
            try:
                scheduler.step()
            except Exception:  # noqa: BLE001 - rank 0's step failed alike and fails its requests in flight
                logger.exception("a scheduler step failed; cancelling the requests in flight")
                _cancel_all(scheduler, handles)
        for request_id, handle in list(handles.items()):
            handle.chunks.clear()  # rank 0 delivers the tokens; here they are only dropped
            if handle.done:
                del handles[request_id]


def _cancel_all(scheduler, handles: dict) -> None:
    for handle in handles.values():
        scheduler.cancel(handle)
    handles.clear()
