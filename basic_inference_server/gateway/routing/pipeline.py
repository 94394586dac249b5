"""A ``/run`` of a pipeline, in the event loop: its steps sent to their model servers as their
inputs are ready, the last step's answer relayed as any ``/run``'s.

The first steps get the client's body as it came (a step's server does not check its
``SIGNATURE``: it names the pipeline); each step but the last answers with the value its
``_post_process`` returned (REQUEST flag PIPE_OUT, REPLY flag PIPED), which the gateway passes to
the steps that take it (PIPE_IN) as the bytes it received, never reading them; a step of several
parents gets them joined (:func:`..transport.pipedata.join`). The last step is the ``/run``'s own
forward (:class:`.runpath.Call`): its answer, a stream included, goes to the client as usual.

A step that fails ends the pipeline with its error, naming the step and its status (the steps
still running are cancelled); the pipeline's ``REQUEST_TIMEOUT`` bounds the whole flow; a client
that leaves cancels the steps in flight.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from ... import jsonutil, requestid
from ...errors import RequestTimeout, ServerDied, ServingError, SignatureDisabled
from ...pipeconfig import PipelineConfig
from ...transport import pipedata
from ...transport.frames import PIPE_IN, PIPE_INLINE, PIPE_OUT, PIPED
from .forward import transport_error
from .outcome import Failure, Misroute, Outcome, Reply

logger = logging.getLogger(__name__)


class Run(Protocol):
    """The ``/run`` a pipeline answers (:class:`.runpath.Call`): its last step is its own forward."""

    path: Any  # the RunPath: its router, loop, channels and metrics
    request: Any
    routed: str
    step_started: float

    def forward_step(self, handle: Any, body: bytes, pipe: int, timeout: float) -> None: ...

    def finish_pipeline(self, status: int, error: dict[str, Any], headers: dict[str, str] | None) -> None: ...


class PipelineRun:
    """The steps of one pipeline request."""

    __slots__ = ("call", "config", "deadline", "done", "ended", "flights", "held", "timer", "v2")

    def __init__(self, call: Run, config: PipelineConfig, v2: tuple[int | None, str] | None = None):
        self.call = call
        self.v2 = v2  # a V2 infer request: its first steps read it as such (JSON header length, version)
        self.config = config
        self.deadline = time.monotonic() + config.request_timeout
        self.done: dict[str, bytes] = {}  # step -> the value it answered
        self.flights: dict[str, tuple[Any, Any, int, float]] = {}  # step -> (handle, channel, tag, sent) in flight
        self.held: dict[str, tuple[Any, int]] = {}  # step -> (channel, tag) of a value its server holds for us
        self.timer: Any = None
        self.ended = False

    def start(self) -> None:
        if self.config.disabled:
            raise SignatureDisabled(f"pipeline {self.config.name!r} is disabled in the configuration")
        self.timer = self.call.path.loop.call_later(self.config.request_timeout, self._expired)
        self._launch()

    # -- steps ------------------------------------------------------------------------------------
    def _launch(self) -> None:
        """Send every step whose parents have all answered (and that has not been sent)."""
        config = self.config
        for step in config.order:
            if step in self.done or step in self.flights or not all(p in self.done for p in config.parents[step]):
                continue
            if step == config.last:
                self._last(step)
                return
            self._send(step)
            if self.ended:
                return

    def _body(self, step: str) -> tuple[bytes, int]:
        """What ``step`` is sent, and its PIPE_IN flag (none for a first step: the client's body)."""
        parents = self.config.parents[step]
        if not parents:
            return self.call.request.body, 0
        if len(parents) == 1:
            return self.done[parents[0]], PIPE_IN
        return b"".join(pipedata.join([(parent, self.done[parent]) for parent in parents])), PIPE_IN

    def _send(self, step: str) -> None:
        call = self.call
        router = call.path.router
        try:
            handle = router.route_to(step)
            router.admission.enter(handle)
        except ServingError as exc:
            self._fail(step, exc.status, jsonutil.dumps_bytes(exc.to_body()), exc.headers())
            return
        channel = call.path.channel(handle)
        body, pipe = self._body(step)
        sent = time.monotonic()
        self.flights[step] = (handle, channel, -1, sent)
        v2 = self.v2 if not pipe else None  # (a first step of a V2 pipeline reads the V2 request)
        tag = channel.send(call.request.request_id, step if v2 else "", body, max(0.001, self.deadline - sent),
                           lambda outcome: self._replied(step, outcome), v2=v2,
                           pipe=pipe | PIPE_OUT | (PIPE_INLINE if self._remote_child(step) else 0))
        if step in self.flights:  # (a send that failed at once has been answered already)
            self.flights[step] = (handle, channel, tag, sent)

    def _remote_child(self, step: str) -> bool:
        """A step that takes ``step``'s value is served on another host: no shared memory in it."""
        endpoints = self.call.path.router.table.routes.endpoints
        return any(step in self.config.parents[child] and getattr(endpoints.get(child), "is_remote", False)
                   for child in self.config.order)

    def _last(self, step: str) -> None:
        """The last step is the /run's own forward: its answer goes to the client as any /run's
        (a step that cannot take it, not READY or full, fails the pipeline as any step would)."""
        body, pipe = self._body(step)
        call = self.call
        if self.timer is not None:
            self.timer.cancel()  # its channel deadline is what is left of the pipeline's
            self.timer = None
        try:
            handle = call.path.router.route_to(step)
            self.ended = True  # (from here the /run's forward answers, even at once)
            call.routed = step
            call.step_started = time.monotonic()
            call.forward_step(handle, body, pipe, max(0.001, self.deadline - time.monotonic()))
        except ServingError as exc:  # not READY, or full: nothing was sent
            self.ended = False
            self._fail(step, exc.status, jsonutil.dumps_bytes(exc.to_body()), exc.headers())

    def _replied(self, step: str, outcome: Outcome) -> None:
        flight = self.flights.pop(step, None)
        if flight is None or self.ended:
            return
        token = requestid.bind(self.call.request.request_id)  # (its log lines carry the request's id)
        try:
            self._answered(step, flight, outcome)
        finally:
            requestid.unbind(token)

    def _answered(self, step: str, flight: tuple[Any, Any, int, float], outcome: Outcome) -> None:
        handle, channel, tag, sent = flight
        router = self.call.path.router
        router.admission.exit(handle)
        handle.served += 1
        if not isinstance(outcome, Failure):
            handle.progress += 1  # it answered: alive (a step that timed out says nothing of that)
        self.call.path.metrics.pipeline_step(self.config.name, step, time.monotonic() - sent)
        match outcome:
            case Reply(status=200, flags=flags, body=body) if flags & PIPED:
                self.done[step] = body
                self.held[step] = (channel, tag)
                self._release_used(step)
                self._launch()
            case Reply(status=200):  # (a server that does not know pipeline steps: not a value)
                self._fail(step, 502, jsonutil.dumps_bytes(ServerDied(
                    "the step's model server answered without a value for the next step").to_body()))
            case Reply(status=status, body=body, meta=meta):
                self._fail(step, status, body, {"Retry-After": meta} if meta and status in (429, 503) else None)
            case Misroute():
                self._fail(step, 502, jsonutil.dumps_bytes(ServingError("the step's model server read a "
                                                                        "SIGNATURE it was not sent").to_body()))
            case Failure(error=error):
                failure = transport_error(handle, error)
                self._fail(step, failure.status, jsonutil.dumps_bytes(failure.to_body()), failure.headers())

    def _release_used(self, step: str) -> None:
        """The parents of ``step`` whose every child has now answered: their values are freed."""
        parents = self.config.parents
        for parent in parents[step]:
            if all(child in self.done for child in self.config.order if parent in parents[child]):
                self._release(parent)

    def _release(self, step: str) -> None:
        held = self.held.pop(step, None)
        if held is not None:
            held[0].release(held[1])

    def release(self) -> None:
        """The request has ended: every value still held for it is freed."""
        for step in list(self.held):
            self._release(step)

    # -- the end ----------------------------------------------------------------------------------
    def _fail(self, step: str, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """End the pipeline with ``step``'s error: its JSON with the pipeline, the step and its status."""
        if self.ended:
            return
        self._stop()
        self.call.finish_pipeline(status, self.error_of(step, status, body), headers)

    def error_of(self, step: str, status: int, body: bytes) -> dict[str, Any]:
        """``step``'s error (its JSON) with the pipeline, the step and its status (the last step's
        too, which its /run answers): each kind of /run renders it its own way."""
        try:
            error = json.loads(body) if len(body) < 65536 else None  # (an error's JSON, not the step's data)
        except ValueError:
            error = None
        if not isinstance(error, dict):
            error = {"ERROR": f"step {step!r} answered HTTP {status}"}
        error.update({"PIPELINE": self.config.name, "STEP": step, "STEP_STATUS": status})
        logger.warning("Pipeline %s: step %s answered %d: %s", self.config.name, step, status, error.get("ERROR"))
        return error

    def _expired(self) -> None:
        self.timer = None
        if self.ended:
            return
        running = sorted(self.flights) or ["(none)"]
        exc = RequestTimeout(f"pipeline {self.config.name!r}: REQUEST_TIMEOUT of {self.config.request_timeout:g}s "
                             f"passed while {', '.join(running)} ran")
        token = requestid.bind(self.call.request.request_id)
        try:
            self._fail(running[0], exc.status, jsonutil.dumps_bytes(exc.to_body()))
        finally:
            requestid.unbind(token)

    def cancel(self) -> bool:
        """The client left: the steps in flight are cancelled. False when the last step runs (the
        /run's own forward, which its Call cancels)."""
        if self.ended:
            return False
        self._stop()
        return True

    def _stop(self) -> None:
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        admission = self.call.path.router.admission
        for handle, channel, tag, _sent in self.flights.values():
            admission.exit(handle)
            if tag is not None and tag >= 0:
                channel.cancel(tag)  # the server skips it, or stops it at its next item
        self.flights.clear()
        self.release()
