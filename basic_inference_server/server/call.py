"""One request in a model server, from its body queued to its answer delivered (:class:`Call`).

A call's state (:class:`CallState`) changes in one place, :meth:`Call._move`, under one lock:
the thread that received it (the channel's reader, the HTTP port's loop) may learn that its client
left while a worker takes it, runs it or answers it::

    QUEUED ──take──▶ RUNNING ──finish──▶ ANSWERED
      │                 │
      │ leave           │ leave (its answer is dropped; a generator is closed at its next item)
      ▼                 ▼
    LEFT_QUEUED       LEFT_RUNNING ──finish──▶ DROPPED
      └──────────finish────────────────────────▲

A call refused when its body is read (bad JSON, misrouted) is answered from QUEUED. Whoever
queued it learns that it ended from ``on_done(call)``, called once, on the thread that ended it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import Enum
from typing import Any

from .. import requestid
from ..errors import ServingError
from .streamout import StreamOut

logger = logging.getLogger(__name__)


class CallState(Enum):
    QUEUED = "queued"  # waiting for a worker, its body not read yet
    RUNNING = "running"  # a worker has it: reading its body, running its hooks
    LEFT_QUEUED = "left while queued"  # its client left before a worker ran it: skipped
    LEFT_RUNNING = "left while running"  # its client left while it ran: its answer goes nowhere
    ANSWERED = "answered"  # its answer (a result or an error) went to on_done
    DROPPED = "dropped"  # ended after its client left: on_done had nobody to answer

    __hash__ = object.__hash__  # looked up in _NEXT on every move: Enum's own hash is a Python call


_NEXT = {
    CallState.QUEUED: frozenset({CallState.RUNNING, CallState.LEFT_QUEUED, CallState.ANSWERED}),
    CallState.RUNNING: frozenset({CallState.LEFT_RUNNING, CallState.ANSWERED}),
    CallState.LEFT_QUEUED: frozenset({CallState.DROPPED}),
    CallState.LEFT_RUNNING: frozenset({CallState.DROPPED}),
    CallState.ANSWERED: frozenset(),
    CallState.DROPPED: frozenset(),
}
_LEFT = frozenset({CallState.LEFT_QUEUED, CallState.LEFT_RUNNING, CallState.DROPPED})
_ENDED = frozenset({CallState.ANSWERED, CallState.DROPPED})
_STATES = threading.Lock()  # one for every call: each holds it for a comparison and an assignment


class Streamed:
    """``Call.result`` of a call whose generator's items went out one by one (nothing is left
    to send as its result)."""

    def __init__(self) -> None:
        raise TypeError("Streamed is a marker: use the class itself")


class Call:
    """One request waiting for, or served by, a worker.

    A request comes as its body (``raw``), read into ``inputs`` by the worker that takes it, never
    on the thread that received it: a large body costs its own worker's time, not the channel's or
    the HTTP port's.
    """

    __slots__ = ("_error", "call_id", "carried", "enqueued", "inputs", "job", "on_done", "open_stream", "openai",
                 "pipe", "raw", "request_id", "result", "routed", "state", "stream", "stream_wanted", "v2",
                 "worker_idx")

    def __init__(self, call_id: int, request_id: str, on_done: Callable[[Call], None], *, raw: bytes | None = None,
                 inputs: dict[str, Any] | None = None, routed: str = ""):
        self.state = CallState.QUEUED  # changed by _move only
        self.inputs = inputs
        self.raw = raw  # the body, until a worker reads it into inputs
        self.routed = routed  # the endpoint the gateway routed it to ("": not checked against the body)
        self.stream: StreamOut | None = None  # the client asked for a streamed answer: items go out here
        self.stream_wanted = False  # the client asked for a stream before its body was read (Accept)
        self.open_stream: Callable[[], StreamOut] | None = None  # makes `stream` once the body asks for one
        self.v2: Any = None  # an Open Inference Protocol request: how to answer it (server.v2.V2Call)
        self.openai: Any = None  # OpenAI's API: True until its body is read, then its openaigen.Generation
        self.job = False  # a durable job's body: its own fields (PRIORITY, WEBHOOK, custom_id) are not inputs
        self.pipe = 0  # a pipeline step: PIPE_IN (its body is the step before's value), PIPE_OUT (answer a value)
        self.carried: Any = None  # what a pipeline's value carries from step to step (a V2 request's wishes)
        self.call_id = call_id
        self.request_id = request_id
        self.on_done: Callable[[Call], None] | None = on_done
        self.result: Any = None
        self._error: ServingError | None = None
        self.worker_idx = -1
        self.enqueued = 0.0

    def _move(self, target: CallState) -> CallState | None:
        """The one place that changes the state: to ``target`` when the state allows it; the
        state it left (None: not allowed, nothing changed)."""
        with _STATES:
            previous = self.state
            if target not in _NEXT[previous]:
                return None
            self.state = target
            return previous

    @property
    def left(self) -> bool:
        """Its client has gone: nothing it makes will be read."""
        return self.state in _LEFT

    def take(self) -> bool:
        """A worker takes it; False when its client has left meanwhile (skip it)."""
        return self._move(CallState.RUNNING) is not None

    def leave(self) -> CallState | None:
        """Its client has gone; the state it was left in (None: it had ended already)."""
        if self._move(CallState.LEFT_QUEUED) is not None:
            return CallState.LEFT_QUEUED
        if self._move(CallState.LEFT_RUNNING) is not None:
            if self.stream is not None:
                self.stream.cancel()  # a worker waiting to send its next item stops waiting
            return CallState.LEFT_RUNNING
        return None

    @property
    def error(self) -> ServingError | None:
        """Why the request failed (None: it did not), answered to its client."""
        return self._error

    @error.setter
    def error(self, exc: ServingError | None) -> None:
        # Kept without its traceback: the traceback holds the frames that raised it, whose locals
        # hold this call (a cycle, freed only by the cyclic collector) and, on the way, the body.
        if exc is not None:
            exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        self._error = exc

    def finish(self) -> CallState | None:
        """It has ended: ANSWERED (on_done delivers its answer) or DROPPED (its client had left);
        on_done is called once. Returns the state it ended from (None: it had ended already)."""
        was = self._move(CallState.DROPPED if self.state in _LEFT else CallState.ANSWERED)
        if was is None and self.state in _LEFT:  # its client left meanwhile
            was = self._move(CallState.DROPPED)
        if was is None:
            return None
        self.inputs = self.raw = self.open_stream = None  # an ended call may be referenced a while longer:
        # its body goes now
        on_done, self.on_done = self.on_done, None  # a callback that holds this call (a bound method) made
        try:                                          # a cycle: garbage for the cyclic collector otherwise
            on_done(self)
        except Exception:
            token = requestid.bind(self.request_id)
            logger.exception("Call %d: delivering the answer failed", self.call_id)
            requestid.unbind(token)
        return was
