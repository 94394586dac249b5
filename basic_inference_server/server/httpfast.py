"""``POST /run`` on the model server's own HTTP port, in the HTTP front's event loop.

The model server's port is served by the same front as the gateway's
(:class:`~basic_inference_server.transport.httpfront.HttpFront`: uvloop, httptools, no thread per
connection). A ``/run`` is accepted in the loop, queued for the worker pool without waiting, and
answered from the loop when the worker that ran it is done, within ``REQUEST_TIMEOUT`` (504, and
the call is dropped from the queue or its answer ignored); a client that leaves cancels it. A
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
from typing import Any

from .. import jsonutil, requestid
from ..errors import BadRequest, Forbidden, RequestTimeout, ServingError
from ..transport import streamformat
from ..transport.deadline import Deadline
from ..transport.frames import PIPE_IN, PIPE_INLINE, PIPE_OUT
from ..transport.httpfront import FrontLimits, HttpFront
from ..transport.httpmsg import HttpRequest, Responder
from ..webutil import (
    ENDPOINT_TOKEN_HEADER,
    JOB_HEADER,
    PIPE_CONTENT_TYPE,
    PIPE_HEADER,
    ROUTED_HEADER,
    Answer,
    RequestIds,
)
from .app import ServerState, create_app, require_token
from .call import Call
from .runpath import RunPath, error_answer

logger = logging.getLogger(__name__)

_TOKEN = ENDPOINT_TOKEN_HEADER.lower().encode("latin-1")
_ROUTED = ROUTED_HEADER.lower().encode("latin-1")
_JOB = JOB_HEADER.lower().encode("latin-1")
_PIPE = PIPE_HEADER.lower().encode("latin-1")


def serve_http(state: ServerState, runpath: RunPath, host: str, port: int, *, token: str | None, threads: int,
               limits: FrontLimits, tls: ssl.SSLContext | None = None) -> HttpFront:
    """The model server's HTTP port, bound (not yet started): ``POST <EXECUTION_PATH>`` in the
    front's loop, every other route by the Flask app on ``threads`` threads; over TLS with ``tls``.
    With ``token``, every route but ``/health`` answers only a client that sends it."""
    http = HttpFront(RequestIds(create_app(state, token)), host, port, fast_path=state.execution_path,
                     threads=threads, limits=limits, tls=tls)
    http.fast_handler = FastRun(runpath, http.loop, token)
    return http


class FastRun:
    """The front's handler of ``POST /run`` (called in the loop)."""

    def __init__(self, runpath: RunPath, loop: asyncio.AbstractEventLoop, token: str | None):
        self.runpath = runpath
        self.state = runpath.state
        self.loop = loop
        self.token = token.encode() if token else None

    def __call__(self, request: HttpRequest, respond: Responder) -> _HttpCall | None:
        token = requestid.bind(request.request_id)
        try:
            require_token(self.token, request.header(_TOKEN))
            routed = (request.header(_ROUTED) or b"").decode("latin-1")
            pipe = _pipe_flags(request.header(_PIPE), self.token)
            return _HttpCall(self, respond, request, routed, streamformat.from_accept(request.accept), pipe)
        except ServingError as exc:
            _write(respond, error_answer(exc))
            return None
        finally:
            requestid.unbind(token)


def _pipe_flags(raw: bytes | None, token: bytes | None) -> int:
    """A pipeline step's flags from its header: its value is a pickle, taken only from a gateway
    that sent this server's token (a server without one takes no pipeline step over HTTP)."""
    if raw is None:
        return 0
    if token is None:
        raise Forbidden("a pipeline step over HTTP needs BIS_ENDPOINT_TOKEN on this server (its values are "
                        "pickles: only a gateway that knows the token may send them)")
    if not raw.isdigit() or int(raw) & ~(PIPE_IN | PIPE_OUT):
        raise BadRequest(f"{PIPE_HEADER}: expected the step's flags, got {raw[:20].decode('latin-1')!r}")
    return int(raw) | PIPE_INLINE  # (no shared memory between hosts)



class _HttpCall:
    """One ``/run`` on the HTTP port: the :class:`~.runpath.Outlet` of its call, written from the
    loop, once (``ended``).

    The answer is whole, or a stream when the client asked for one (``Accept``, or ``"STREAM":
    true`` in the body, which the worker reads): the worker's items are written as they come (SSE
    or NDJSON), each one the client's socket has taken lets the worker send one more, and the end
    (or the error that ends it) comes last. Its :class:`~...transport.deadline.Deadline` is the
    gateway's: ``REQUEST_TIMEOUT`` for the answer or the first item (504), ``STREAM_IDLE_TIMEOUT``
    between items, ``STREAM_TIMEOUT`` for the whole stream. A client that leaves cancels the call:
    out of the queue, or its answer dropped (a generator is closed)."""

    __slots__ = ("began", "call", "deadline", "ended", "fast", "fmt", "owed", "parties", "respond", "timer")

    def __init__(self, fast: FastRun, respond: Responder, request: HttpRequest, routed: str,
                 fmt: streamformat.StreamFormat | None, pipe: int = 0):
        self.fast, self.respond, self.fmt = fast, respond, fmt
        self.ended = self.began = False
        self.owed = 0
        # The request counts in flight (a drain waits for it) until its call has ended and its
        # answer has been written to the end, or given up: two parties, each leaves once.
        self.parties = 2
        state = fast.state
        self.deadline = Deadline(fast.loop.time(), state.request_timeout, state.stream_idle_timeout,
                                 state.stream_timeout)
        self.call: Call | None = fast.runpath.call(self, request.body, request.request_id, routed, fmt is not None,
                                                   job=request.header(_JOB) == b"1", pipe=pipe)
        fast.runpath.queue(self.call)  # raises ServingError (503): never ended, so nothing else to undo
        self.timer: asyncio.TimerHandle | None = fast.loop.call_at(self.deadline.due, self._check_time)

    # -- the Outlet: from the worker's thread ----------------------------------------------------
    def whole(self, answer: Answer) -> None:
        self.fast.loop.call_soon_threadsafe(self._whole, answer)

    def parts(self, parts: list[Any], header_length: int) -> None:
        raise ServingError("the HTTP port answers no Open Inference Protocol request")

    def piped(self, parts: list[Any], fds: list[int]) -> None:
        """A pipeline step's value for the next step (inline: no memfd crosses hosts)."""
        self.fast.loop.call_soon_threadsafe(self._piped, b"".join(parts))  # (one copy: join reads buffers)

    def _piped(self, body: bytes) -> None:
        if not self.ended:
            self._settle()
            self.respond(200, body, None, PIPE_CONTENT_TYPE)

    def _format(self) -> streamformat.StreamFormat:
        if self.fmt is None:
            self.fmt = streamformat.SSE  # the body asked for a stream ("STREAM": true), Accept did not
        return self.fmt

    def send_item(self, item: bytes) -> None:
        self._format()
        self.fast.loop.call_soon_threadsafe(self._item, item)

    def push(self) -> None:
        """Items go to the loop one by one as they are sent: nothing waits to be pushed."""

    def end(self, status: int, body: bytes, plain: bool = False) -> None:
        fmt = self._format()
        final = fmt.end(body) if status == 200 else fmt.error(body)
        self.fast.loop.call_soon_threadsafe(self._end, final)

    def dropped(self) -> None:
        """Its client left: there is nothing to write."""

    def delivered(self) -> None:
        self.fast.loop.call_soon_threadsafe(self._leave)

    # -- in the loop -------------------------------------------------------------------------------
    def _leave(self) -> None:
        self.parties -= 1
        if not self.parties:
            self.fast.state.inflight.exit()

    def _item(self, item: bytes) -> None:
        if self.ended:
            return
        self.deadline.item(self.fast.loop.time())
        data = self.fmt.item(item)
        taken = self.respond.chunk(data) if self.began else self.respond.start_stream(self.fmt.content_type, data)
        self.began = True
        if taken:
            self.call.stream.grant(1)
        else:
            self.owed += 1

    def _end(self, final: bytes) -> None:
        if self.ended:
            return
        self._settle()
        if not self.began:
            self.respond.start_stream(self.fmt.content_type)
        self.respond.end_stream(final)

    def _whole(self, answer: Answer) -> None:
        if not self.ended:
            self._settle()
            _write(self.respond, answer)

    def _settle(self) -> None:
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        self._leave()
        self.call = None  # call -> its stream -> this outlet's methods -> call: let reference counts free them

    def _check_time(self) -> None:
        if self.ended:
            return
        now = self.fast.loop.time()
        if not self.deadline.passed(now):
            self.timer = self.fast.loop.call_at(self.deadline.due, self._check_time)
            return
        error = RequestTimeout(self.deadline.why(now))
        self.fast.state.pool.cancel(self.call)
        if self.began:
            self._end(self.fmt.error(jsonutil.dumps_bytes(error.to_body())))
        else:
            self._whole(error_answer(error))

    def cancel(self) -> None:
        """The client left before the end of its answer: the call leaves the queue, or its answer
        is dropped (a generator is closed)."""
        if not self.ended:
            call = self.call
            self._settle()
            self.fast.state.pool.cancel(call)

    def resumed(self) -> None:
        """The client's socket has drained: the worker may send the items it was owed."""
        if self.owed and not self.ended:
            self.call.stream.grant(self.owed)
            self.owed = 0


def _write(respond: Responder, answer: Answer) -> None:
    status, body, headers = answer
    respond(status, body, list(headers.items()) if headers else None)
