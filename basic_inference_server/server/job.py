"""One request in a model server, from its body queued to its answer delivered (:class:`Job`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .. import requestid
from ..errors import ServingError
from .streams import StreamOut

logger = logging.getLogger(__name__)


class Job:
    """One request waiting for, or served by, a worker.

    A request from a client comes as its body (``raw``), read into ``inputs`` by the worker that
    takes it (the pool's ``accept``), never on the thread that received it: a large body costs its
    own worker's time, not the channel's or the HTTP port's. Whoever queued it learns that it
    finished either from ``on_done(job)``, called on the worker's thread (nothing waits), or by
    waiting on ``done``.
    """

    __slots__ = ("inputs", "raw", "routed", "call_id", "request_id", "done", "on_done", "result", "_error",
                 "cancelled", "worker_idx", "enqueued", "stream", "stream_wanted", "open_stream", "streamed",
                 "stopped_running", "finished", "v2")

    def __init__(self, inputs: dict[str, Any] | None, call_id: int, request_id: str = requestid.NONE,
                 on_done: Callable[[Job], None] | None = None, stream: StreamOut | None = None, *,
                 raw: bytes | None = None, routed: str = ""):
        self.inputs = inputs
        self.raw = raw  # the body, until a worker reads it into inputs
        self.routed = routed  # the endpoint the gateway routed it to ("": not checked against the body)
        self.stream = stream  # the client asked for a streamed answer: items go out here
        self.stream_wanted = False  # the client asked for a stream before its body was read (Accept)
        self.open_stream: Callable[[], StreamOut] | None = None  # makes `stream` once the body asks for one
        self.v2: Any = None  # an Open Inference Protocol request: how to answer it (server.v2.V2Call)
        self.streamed = False  # a generator's items went out (or were collected into result)
        self.stopped_running = False  # its client left while a worker ran its generator: closed
        self.finished = False
        self.call_id = call_id
        self.request_id = request_id
        self.on_done = on_done
        self.done = threading.Event() if on_done is None else None
        self.result: Any = None
        self._error: ServingError | None = None
        self.cancelled = False
        self.worker_idx = -1
        self.enqueued = 0.0

    @property
    def error(self) -> ServingError | None:
        """Why the request failed (None: it did not), answered to its client."""
        return self._error

    @error.setter
    def error(self, exc: ServingError | None) -> None:
        # Kept without its traceback: the traceback holds the frames that raised it, whose locals
        # hold this job (a cycle, freed only by the cyclic collector) and, on the way, the body.
        if exc is not None:
            exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        self._error = exc

    def finish(self) -> None:
        if self.finished:
            return  # a request of a streaming batch is finished when its stream ends, not twice
        self.finished = True
        self.inputs = self.raw = None  # a finished job may be referenced a while longer: drop the body now
        if self.on_done is None:
            self.done.set()
            return
        try:
            self.on_done(self)
        except Exception:
            logger.exception("Call %d: delivering the answer failed", self.call_id)
        finally:  # a callback that holds this job (a bound method) made a cycle: garbage for the
            self.on_done = None  # cyclic collector, whose passes over it stall every request
