"""One client connection of an HTTP front (:mod:`.httpfront`): parse with httptools,
answer in order (JSON, WSGI or streamed), enforce the read limits and deadlines."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from enum import Enum
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import httptools

from .. import jsonutil, requestid
from ..errors import body_too_large, error_body, from_http_status
from ..webutil import METHOD_NOT_ALLOWED
from .gather import GATHER_MIN, Pieces, body_size, write_gathered
from .httpmsg import JSON, FrontLimits, Headers, HttpRequest, Refused, Responder
from .tuning import trimmer
from .wsgi import WsgiCall, call_wsgi, wsgi_environ

logger = logging.getLogger(__name__)

STREAM_BUFFER = 65536  # a streaming client's unsent bytes past which its producer is told to wait
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_WHOLE_BODY = 65536  # bodies declared larger are read into one buffer that grows as their bytes come


class _Reading(Enum):
    IDLE = "idle"  # between requests (keep-alive) or before the first byte
    HEAD = "head"
    BODY = "body"


class Front(Protocol):
    """What a connection shares with the front that accepted it (:class:`~.httpfront.HttpFront`)."""

    app: Callable[..., Iterable[bytes]]  # the WSGI app of every route but the fast ones
    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    executor: Executor  # where the WSGI app runs
    limits: FrontLimits
    fast_path: bytes  # POST here goes to fast_handler, in the loop
    fast_handler: Callable[[HttpRequest, Responder], Any] | None
    fast_prefix: bytes  # POSTs under it go to prefix_handler, in the loop
    prefix_handler: Callable[[HttpRequest, Responder], Any] | None
    connections: set[HttpConnection]
    idle: dict[HttpConnection, None]  # connections between requests, longest idle first
    held_back: set[object]  # who asked to stop reading requests
    draining_connections: bool  # answers close their connection (shutting down)
    refused: int  # connections refused past MAX_CONNECTIONS
    refused_logged: float

    def evict_idle(self) -> bool:
        """Close the connection idle the longest, to admit a new one; False when none is idle."""

    def date_header(self) -> bytes:
        """The ``Date:`` header line of answers given now."""


class HttpConnection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, front: Front):
        self.front = front
        self.limits = front.limits
        self.transport: asyncio.Transport | None = None
        self._fd: int | None = None  # the socket's descriptor, for gathered writes (None under TLS)
        self.parser = httptools.HttpRequestParser(self)
        self.reading = _Reading.IDLE
        self.deadline = time.monotonic() + self.limits.header_timeout
        self.busy = False  # a request has been handed over and not answered yet
        self.queue: deque[HttpRequest] = deque()
        self.remote: tuple[str, int] = ("", 0)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._whole: bytearray | None = None  # the body of a large request with a Content-Length
        self.idle_since: float | None = None  # between requests on a kept-alive connection (None: not)
        self._body_bytes = 0
        self._request_id: str | None = None
        self._declared: bytes | None = None  # Content-Length
        self._expect = False  # Expect: 100-continue
        self._accept: bytes | None = None
        self._pending: Any = None  # the fast handler's request in progress (has .cancel(), .resumed())
        self._current: HttpRequest | None = None  # the request handed to the fast handler last
        self.writable = True  # the client takes what is written (False: over the transport's high mark)
        self._chunked = False  # the answer being streamed is chunked (HTTP/1.1)

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")  # answers are written gathered, bar TLS's
        self._fd = sock.fileno() if sock is not None and transport.get_extra_info("sslcontext") is None else None
        peer = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1]) if isinstance(peer, tuple) else ("", 0)
        self.front.connections.add(self)
        if self.front.held_back:
            transport.pause_reading()  # type: ignore[attr-defined]
        if len(self.front.connections) > self.limits.max_connections and not self.front.evict_idle():
            self.front.refused += 1
            now = time.monotonic()
            if now - self.front.refused_logged > 10:  # once per 10 s, however many are refused
                self.front.refused_logged = now
                logger.warning("Refusing connections: MAX_CONNECTIONS=%d are open (%d refused so far)",
                               self.limits.max_connections, self.front.refused)
            self._refuse(503, f"too many connections (MAX_CONNECTIONS={self.limits.max_connections}); retry later")
            return
        self._set_idle(True)  # nothing sent yet: as idle as a kept-alive connection

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        pending = self._pending
        if pending is not None:
            pending.resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.front.idle.pop(self, None)
        self.transport = None
        # The parser holds this protocol (its callbacks) and this protocol the parser: drop the
        # parser and the buffers now, or their memory waits for a full collection.
        self.parser = None
        whole, self._whole, self._body, self._headers = self._whole, None, [], []
        if whole is not None:  # a large body the client did not finish: its memory goes back now
            trimmer.freed(len(whole))
        self.queue.clear()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Refused):
                self._refuse(cause.status, cause.message)
            else:
                logger.error("HTTP front: %s", exc)
                self._refuse(500, "internal error while reading the request")
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported here")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._set_idle(False)
        self._set_reading(_Reading.HEAD)
        self._url, self._headers, self._head_bytes = b"", [], 0
        self._body, self._body_bytes, self._request_id = [], 0, None
        self._declared, self._expect, self._accept, self._prefer = None, False, None, None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        self._head_bytes += size + len(value)  # _count_head, inline: called for every header of every request
        limits = self.limits
        if self._head_bytes > limits.max_header_bytes:
            raise Refused(431, f"request head larger than {limits.max_header_bytes} bytes")
        headers = self._headers
        if len(headers) >= limits.max_headers:
            raise Refused(431, f"more than {limits.max_headers} request headers")
        headers.append((name, value))
        # the few headers read here, found by their length first
        if size == 12 and name.lower() == b"x-request-id":
            self._request_id = value.decode("latin-1")
        elif size == 14 and name.lower() == b"content-length":
            self._declared = value
        elif size == 6:
            lower = name.lower()
            if lower == b"expect":
                self._expect = value.lower() == b"100-continue"
            elif lower == b"accept":
                self._accept = value
            elif lower == b"prefer":
                self._prefer = value

    def on_headers_complete(self) -> None:
        self._set_reading(_Reading.BODY)
        declared = self._declared
        if declared is not None and declared.isdigit():
            size = int(declared)
            if size > self.limits.max_body:
                raise Refused(413, body_too_large(self.limits.max_body, size).message)
            if size > _WHOLE_BODY:  # a large body goes into one buffer: no pieces, no join
                self._whole = bytearray()  # grown as the bytes come (never allocated for what was only declared)
        if self._expect:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body:
            raise Refused(413, body_too_large(self.limits.max_body).message)
        if self._whole is not None:
            self._whole += body
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        if self._whole is not None:
            body, self._whole = self._whole, None
            trimmer.freed(len(body))  # large: its memory goes back to the system once it is answered
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = HttpRequest(parser.get_method().decode("ascii"), self._url, self._headers, body,
                              parser.get_http_version(), parser.should_keep_alive(),
                              requestid.accept(self._request_id), self.remote,
                              None if self._accept is None else self._accept.decode("latin-1"),
                              self._prefer is not None and b"respond-async" in self._prefer.lower())
        self._set_reading(_Reading.IDLE)
        self.queue.append(request)
        if len(self.queue) > self.limits.max_pipelined:
            self.update_reading()
        if not self.busy:
            self._dispatch()

    # -- answering -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        request = self.queue.popleft()
        self.busy = True
        path = request.target.partition(b"?")[0]
        front = self.front
        handler = None
        if path == front.fast_path or (b"%" in path and unquote_to_bytes(path) == front.fast_path):
            handler = front.fast_handler  # "/%72un" is "/run", as it is for the routes of the WSGI app
        elif front.prefix_handler is not None and request.method == "POST" and path.startswith(front.fast_prefix):
            handler = front.prefix_handler
        elif front.loop_routes:
            for prefix, route in front.loop_routes:  # every method: the handler answers 405 itself
                if path == prefix or path.startswith(prefix + b"/"):
                    self._run_in_loop(request, route, path)
                    return
        if handler is not None:
            if request.method != "POST":
                exc = METHOD_NOT_ALLOWED
                token = requestid.bind(request.request_id)  # the error body names it
                try:
                    body = jsonutil.dumps_bytes(exc.to_body())
                finally:
                    requestid.unbind(token)
                self.respond(request, exc.status, body, list(exc.headers().items()))
                return
            self._run_in_loop(request, handler, path)
            return
        environ = wsgi_environ(request, self.front.host, self.front.port)
        future = self.front.loop.run_in_executor(self.front.executor, call_wsgi, self.front.app, environ)
        future.add_done_callback(lambda done: self._wsgi_done(request, done))

    def _run_in_loop(self, request: HttpRequest, handler: Callable[[HttpRequest, Responder], Any],
                     path: bytes) -> None:
        try:
            self._current = request
            pending = handler(request, Responder(self, request))
            # Not answered yet: to cancel if the client leaves first (unless the answer came
            # at once and a pipelined request behind it is the one in progress now).
            if self.busy and self._current is request:
                self._pending = pending
        except Exception as exc:
            logger.exception("Unhandled %s on %s", type(exc).__name__, path.decode("latin-1"))
            self.respond(request, 500, jsonutil.dumps_bytes(
                error_body("InternalError", f"internal error: {type(exc).__name__}")), None)

    def respond(self, request: HttpRequest, status: int, body: bytes | Pieces, headers: Headers | None,
                content_type: str = JSON) -> None:
        """Answer ``request`` (JSON unless told; any time after it was handed over; in the loop);
        a body given as :class:`~.gather.Pieces` is written gathered, never joined."""
        if self.transport is None or self.transport.is_closing():
            self._pending = None
            return
        keep = self._keeps(request)
        head = (f"Content-Type: {content_type}\r\nContent-Length: {body_size(body)}\r\n"
                f"X-Request-ID: {request.request_id}\r\n")
        if headers:
            head += "".join(f"{name}: {value}\r\n" for name, value in headers)
        self._write(f"{status} {_REASONS.get(status, 'Unknown')}", head, body, keep, request.method == "HEAD")
        self._answered(keep)

    def start_stream(self, request: HttpRequest, content_type: str, first: bytes = b"") -> bool:
        """Begin a streamed answer (200, chunked on HTTP/1.1, else ended by closing), its head and
        ``first`` piece in one write; the same answer as :meth:`send_chunk`."""
        if self.transport is None or self.transport.is_closing():
            return False
        self._chunked = request.version == "1.1"
        keep = self._chunked and self._keeps(request)
        head = (f"Content-Type: {content_type}\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                f"X-Request-ID: {request.request_id}\r\n"
                + ("Transfer-Encoding: chunked\r\n" if self._chunked else ""))
        request.keep_alive = keep
        self.transport.set_write_buffer_limits(high=STREAM_BUFFER)  # type: ignore[attr-defined]
        self._write("200 OK", head, self._framed(first), keep, False)
        return self.writable

    def send_chunk(self, data: bytes) -> bool:
        """Write a piece of a streamed answer; False when the client is not taking them as fast
        (the producer waits for ``resumed()``) or is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(self._framed(data))
        return self.writable

    def _framed(self, data: bytes) -> bytes:
        if not self._chunked or not data:  # an empty chunk would end the answer
            return data
        return b"%x\r\n%b\r\n" % (len(data), data)

    def end_stream(self, request: HttpRequest, data: bytes) -> None:
        """The last piece of a streamed answer, then the connection serves its next request."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self._pending = None
            return
        if self._chunked:
            transport.write(self._framed(data) + b"0\r\n\r\n")
        elif data:
            transport.write(data)
        self._chunked = False
        self._answered(request.keep_alive)

    def _wsgi_done(self, request: HttpRequest, done: asyncio.Future) -> None:
        try:
            call: WsgiCall = done.result()
        except Exception as exc:
            logger.exception("Unhandled %s in a route", type(exc).__name__)
            self.respond(request, 500, jsonutil.dumps_bytes(error_body("InternalError", "internal error")), None)
            return
        if self.transport is not None and not self.transport.is_closing():
            keep = call.keep_alive and self._keeps(request)
            head = "".join(f"{name}: {value}\r\n" for name, value in call.headers)
            if not call.has_length:
                head += f"Content-Length: {len(call.body)}\r\n"
            self._write(call.status, head, call.body, keep, request.method == "HEAD")
            self._answered(keep)
        if call.close is not None:
            self.front.executor.submit(call.close)  # after the answer is out: /shutdown stops on close

    def _write(self, status_line: str, head: str, body: bytes | Pieces, keep: bool, head_only: bool) -> None:
        """The one place an answer is written: status line, headers, Date, Connection, then the
        body, in one gathered write."""
        head_bytes = (f"HTTP/1.1 {status_line}\r\n{head}".encode("latin-1"), self.front.date_header(),
                      b"\r\n" if keep else b"Connection: close\r\n\r\n")
        if head_only:
            self.transport.write(b"".join(head_bytes))
        elif isinstance(body, Pieces):
            write_gathered(self.transport, self._fd, (*head_bytes, *body))
        elif len(body) < GATHER_MIN:
            self.transport.write(b"".join((*head_bytes, body)))
        else:
            write_gathered(self.transport, self._fd, (*head_bytes, body))

    def _keeps(self, request: HttpRequest) -> bool:
        """Whether the connection stays open after the answer to ``request`` (a client's end of
        file, even a half-close, ends it: a client that leaves cancels what it asked, as at nginx)."""
        return request.keep_alive and not self.front.draining_connections

    def _answered(self, keep: bool) -> None:
        self.busy = False
        self._pending = None
        if not keep:
            self.transport.close()
            return
        if self.queue:
            self.update_reading()
            self._dispatch()
        elif self.reading is _Reading.IDLE:
            self.deadline = time.monotonic() + self.limits.keepalive_timeout
            self._set_idle(True)

    # -- reading state and limits ------------------------------------------------------------------
    def update_reading(self) -> None:
        """Read from the client unless it has pipelined too much or the front holds back."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.front.held_back or len(self.queue) > self.limits.max_pipelined:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _set_reading(self, reading: _Reading) -> None:
        """The one place that moves the read state; each state has its own deadline."""
        self.reading = reading
        limits = self.limits
        if reading is _Reading.HEAD:
            timeout = limits.header_timeout
        elif reading is _Reading.BODY:
            timeout = limits.body_timeout
        else:
            timeout = limits.keepalive_timeout
        self.deadline = time.monotonic() + timeout

    def _set_idle(self, idle: bool) -> None:
        """The one place a connection enters or leaves the front's idle table (oldest first), from
        which the oldest are closed when the table of connections is full."""
        idle_table = self.front.idle
        idle_table.pop(self, None)
        if idle:
            self.idle_since = time.monotonic()
            idle_table[self] = None
        else:
            self.idle_since = None

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_header_bytes:
            raise Refused(431, f"request head larger than {self.limits.max_header_bytes} bytes")

    def timed_out(self) -> None:
        if self.reading is _Reading.IDLE:
            self.close()  # nothing half-read: a quiet close, as for any idle keep-alive connection
            return
        what = "request head" if self.reading is _Reading.HEAD else "request body"
        self._refuse(408, f"{what} not received in time")

    def _refuse(self, status: int, message: str) -> None:
        """Answer an error and close (a request that cannot be read): with the request's id, the
        client's X-Request-ID once its head has come, else a new one."""
        if self.transport is None or self.transport.is_closing():
            return
        request_id = requestid.accept(self._request_id)
        token = requestid.bind(request_id)
        try:
            body = jsonutil.dumps_bytes(from_http_status(status, message).to_body())
        finally:
            requestid.unbind(token)
        self._write(f"{status} {_REASONS.get(status, 'Error')}",
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"X-Request-ID: {request_id}\r\n", body, False, False)
        self.busy = False
        self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

