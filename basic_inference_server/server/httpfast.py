"""``POST /run`` on the model server's own HTTP port, in the HTTP front's event loop.

The model server's port is served by the same front as the gateway's
(:class:`~basic_inference_server.transport.httpfront.HttpFront`: uvloop, httptools, no thread per
connection). A ``/run`` is accepted in the loop, queued for the worker pool without waiting, and
answered from the loop when the worker that ran it is done, within ``REQUEST_TIMEOUT`` (504, and
the job is dropped from the queue or its answer ignored); a client that leaves cancels it. A
streamed answer (``Accept``, or ``"STREAM": true``) is written item by item as the worker yields
them, with the same credit as over the gateway's channel. Every other route goes to the WSGI app
(Flask) on the front's thread pool. This is what a gateway
calls for a remote endpoint, and what a client calling a server directly gets:
its token (401: ``BIS_ENDPOINT_TOKEN`` for a server run on its own, a secret of its own for a
gateway's child, which serves its gateway only), ``X-Routed-Signature`` (421), 503 while draining or
with the queue full, the same JSON errors as through the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from .. import jsonutil, requestid
from ..errors import RequestTimeout, ServingError, ShuttingDown
from ..transport import streamformat
from ..transport.httpfront import FrontLimits, HttpFront
from ..transport.httpmsg import HttpRequest, Responder
from ..webutil import ENDPOINT_TOKEN_HEADER, ROUTED_HEADER, RequestIds
from .app import ServerState, create_app, error_answer, require_token
from .job import Job
from .streams import StreamOut

logger = logging.getLogger(__name__)

_TOKEN = ENDPOINT_TOKEN_HEADER.lower().encode("latin-1")
_ROUTED = ROUTED_HEADER.lower().encode("latin-1")


def serve_http(state: ServerState, host: str, port: int, *, token: str | None, threads: int,
               limits: FrontLimits, tls: ssl.SSLContext | None = None) -> HttpFront:
    """The model server's HTTP port, bound (not yet started): ``POST <EXECUTION_PATH>`` in the
    front's loop, every other route by the Flask app on ``threads`` threads; over TLS with ``tls``.
    With ``token``, every route but ``/health`` answers only a client that sends it."""
    http = HttpFront(RequestIds(create_app(state, token)), host, port, fast_path=state.execution_path,
                     threads=threads, limits=limits, tls=tls)
    http.fast_handler = FastRun(state, http.loop, token)
    return http


class FastRun:
    """The front's handler of ``POST /run`` (called in the loop)."""

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop, token: str | None):
        self.state = state
        self.loop = loop
        self.token = token.encode() if token else None

    def __call__(self, request: HttpRequest, respond: Responder) -> _Call | None:
        token = requestid.bind(request.request_id)
        try:
            require_token(self.token, request.header(_TOKEN))
            if self.state.draining:
                raise ShuttingDown()
            routed = (request.header(_ROUTED) or b"").decode("latin-1")
            call = _Call(self, respond, request, routed, streamformat.from_accept(request.accept))
            call.start()
            return call
        except ServingError as exc:
            _fail(respond, exc)
            return None
        finally:
            requestid.unbind(token)


class _Call:
    """One ``/run``: its body queued for the workers (the worker that takes it reads it), its
    answer written from the loop, once (``ended``).

    The answer is whole, or a stream when the client asked for one (``Accept``, or ``"STREAM":
    true`` in the body, which the worker reads): the worker's items are written as they come (SSE
    or NDJSON), each one the client has taken lets the worker send one more, and the end (or the
    error that ends it) comes last. The first item or the whole answer is due within
    ``REQUEST_TIMEOUT`` (504), each next item within ``STREAM_IDLE_TIMEOUT``, the whole stream
    within ``STREAM_TIMEOUT``, as at the gateway. A client that leaves cancels the job: out of the
    queue, or its answer dropped (a generator is closed)."""

    __slots__ = ("began", "deadline", "ended", "ends_at", "fast", "fmt", "job", "owed", "parties", "respond",
                 "timer")

    def __init__(self, fast: FastRun, respond: Responder, request: HttpRequest, routed: str,
                 fmt: streamformat.StreamFormat | None):
        state = fast.state
        self.fast, self.respond, self.fmt = fast, respond, fmt
        self.job: Job | None = Job(None, next(state.call_ids), request.request_id, on_done=self._done_in_worker,
                                   raw=request.body, routed=routed)
        self.job.stream_wanted, self.job.open_stream = fmt is not None, self._open_stream
        self.ended = self.began = False
        self.owed = 0
        # The request counts in flight (a drain waits for it) until its job has finished and its
        # answer has been written to the end, or given up: two parties, each leaves once.
        self.parties = 2
        now = fast.loop.time()
        self.deadline = now + state.request_timeout
        self.ends_at = now + state.stream_timeout
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        state = self.fast.state
        state.inflight.enter()
        try:
            state.pool.enqueue(self.job)
        except BaseException:  # refused (503): never finished, so the cycle through its callbacks is cut here
            state.inflight.exit()
            self.job.on_done = self.job.open_stream = None
            self.job = None
            raise
        self.timer = self.fast.loop.call_at(self.deadline, self._check_time)

    # -- from the worker's thread ----------------------------------------------------------------
    def _open_stream(self) -> StreamOut:
        """The body asks for a stream: the worker's items come here (SSE unless Accept said)."""
        if self.fmt is None:
            self.fmt = streamformat.SSE
        return self.fast.state.stream_out(self._item_in_worker, lambda: None)

    def _item_in_worker(self, item: bytes) -> None:
        self.fast.loop.call_soon_threadsafe(self._item, item)

    def _done_in_worker(self, job: Job) -> None:
        """The answer is made here, on the worker's thread (a large result is encoded off the
        loop), and written by the loop."""
        loop = self.fast.loop
        token = requestid.bind(job.request_id)
        try:
            if job.cancelled or job.stream is None:  # one wake-up of the loop: the answer, and the job gone
                loop.call_soon_threadsafe(self._finished, None if job.cancelled else self._answer_of(job))
                return
            try:
                items, (status, body, _flags) = self.fast.state.stream_end(job)
                for item in items:
                    self._item_in_worker(item)
                if status != 200 and not job.stream.count:  # failed before its first item: a JSON error
                    headers = job.error.headers() if job.error is not None else None
                    loop.call_soon_threadsafe(self._whole, (status, body, headers))
                    return
                final = self.fmt.end(body) if status == 200 else self.fmt.error(body)
                job.stream.end(lambda: loop.call_soon_threadsafe(self._end, final))
            finally:
                loop.call_soon_threadsafe(self._leave)
        finally:
            requestid.unbind(token)

    def _answer_of(self, job: Job) -> tuple[int, bytes, dict[str, str] | None]:
        try:
            return self.fast.state.answer_of(job)
        except Exception as exc:  # whatever happens, the client gets an answer
            logger.exception("Call %d: the answer cannot be made", job.call_id)
            return error_answer(ServingError(f"internal error: {type(exc).__name__}"))

    # -- in the loop -------------------------------------------------------------------------------
    def _leave(self) -> None:
        self.parties -= 1
        if not self.parties:
            self.fast.state.inflight.exit()

    def _item(self, item: bytes) -> None:
        if self.ended:
            return
        self.deadline = self.fast.loop.time() + self.fast.state.stream_idle_timeout
        data = self.fmt.item(item)
        taken = self.respond.chunk(data) if self.began else self.respond.start_stream(self.fmt.content_type, data)
        self.began = True
        if taken:
            self.job.stream.grant(1)
        else:
            self.owed += 1

    def _end(self, final: bytes) -> None:
        if self.ended:
            return
        self._settle()
        if not self.began:
            self.respond.start_stream(self.fmt.content_type)
        self.respond.end_stream(final)

    def _finished(self, answer: tuple[int, bytes, dict[str, str] | None] | None) -> None:
        """The job has finished with this whole answer (None: cancelled, nobody reads one)."""
        self._leave()
        if answer is not None:
            self._whole(answer)

    def _whole(self, answer: tuple[int, bytes, dict[str, str] | None]) -> None:
        if not self.ended:
            self._settle()
            _write(self.respond, answer)

    def _settle(self) -> None:
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        self._leave()
        self.job = None  # job -> its stream -> this call's methods -> job: let reference counts free them

    def _check_time(self) -> None:
        if self.ended:
            return
        now = self.fast.loop.time()
        due = min(self.deadline, self.ends_at) if self.began else self.deadline
        if now < due:
            self.timer = self.fast.loop.call_at(due, self._check_time)
            return
        state = self.fast.state
        if not self.began:
            error = RequestTimeout(f"request did not finish within REQUEST_TIMEOUT={state.request_timeout:g}s")
        elif now >= self.ends_at:
            error = RequestTimeout(f"stream took longer than STREAM_TIMEOUT={state.stream_timeout:g}s")
        else:
            error = RequestTimeout(f"no item within STREAM_IDLE_TIMEOUT={state.stream_idle_timeout:g}s")
        state.pool.cancel(self.job)
        if self.began:
            self._end(self.fmt.error(jsonutil.dumps_bytes(error.to_body())))
        else:
            self._whole(error_answer(error))

    def cancel(self) -> None:
        """The client left before the end of its answer: the job leaves the queue, or its answer
        is dropped (a generator is closed)."""
        if not self.ended:
            job = self.job
            self._settle()
            self.fast.state.pool.cancel(job)

    def resumed(self) -> None:
        """The client's socket has drained: the worker may send the items it was owed."""
        if self.owed and not self.ended:
            self.job.stream.grant(self.owed)
            self.owed = 0


def _write(respond: Responder, answer: tuple[int, bytes, dict[str, str] | None]) -> None:
    status, body, headers = answer
    respond(status, body, list(headers.items()) if headers else None)


def _fail(respond: Responder, exc: ServingError) -> None:
    _write(respond, error_answer(exc))
