"""The gateway's HTTP/1.1 client to one remote model server, in the HTTP front's event loop.

It has the interface of the internal channel's client (:class:`~..routing.channel.ChannelClient`:
``send``, ``grant``, ``cancel``, ``expire``, ``in_flight``, ``close``), so that ``/run`` forwards to
a model server elsewhere exactly as to a child: same callbacks, same deadlines, same errors
(``ConnectFailed``: nothing was sent; ``ConnectionLost``: the connection broke before the whole
answer; ``ReadTimedOut``: no answer in time). The hop is plain HTTP/1.1 on keep-alive connections,
one request at a time on each, pooled per address; every request carries ``X-Endpoint-Token``
(``BIS_ENDPOINT_TOKEN``), ``X-Request-ID`` and the signature it was routed by (a server that finds
another one in the body answers 421, and the gateway routes the request again). A stream is asked
for as Server-Sent Events and relayed item by item; a client that stops reading pauses the
connection it comes on (TCP holds back the server's generator). A request whose client leaves,
or that runs out of time, closes its connection: that is how HTTP/1.1 says "no longer wanted".
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Callable

import httptools

from ...errors import SHUTTING_DOWN
from ...requestid import HEADER as REQUEST_ID_HEADER
from ...transport.deadline import Deadline
from ...transport.frames import MISROUTED, PIPE_IN, PIPE_OUT, PIPED, STREAM, STREAM_WINDOW
from ...webutil import ENDPOINT_TOKEN_HEADER, JOB_HEADER, PIPE_CONTENT_TYPE, PIPE_HEADER, ROUTED_HEADER
from ..routing.channel import BACKLOG_HIGH, BACKLOG_LOW, MAX_REPLY, Cancel
from ..routing.outcome import Callback, Forwarded, Misroute, OnItem, Reply
from ..routing.upstream import ConnectFailed, ConnectionLost, ReadTimedOut
from .handle import address_of

_OVERLOADED = b'"type":"Overloaded"'
_PIPE_TYPE = PIPE_CONTENT_TYPE.encode("latin-1")
_SHUTTING_DOWN = SHUTTING_DOWN.encode()


class NotRun(OSError):
    """The server refused the request without running it (503: shutting down, or its queue full):
    it may go to another server. Holds the server's answer, for when none is left."""

    def __init__(self, address: str, status: int, retry_after: str | None, body: bytes):
        self.draining = _SHUTTING_DOWN in body
        super().__init__(f"{address} refused the request without running it"
                         + (" (shutting down)" if self.draining else " (its queue is full)"))
        self.status, self.retry_after, self.body = status, retry_after, body


class SecretRefused(OSError):
    """The server answered 401: its BIS_ENDPOINT_TOKEN is not this gateway's."""
CONNECT_TIMEOUT = 2.0
IDLE_MAX = 30.0  # an idle connection older than this is closed, not reused (servers close theirs later)


class _Request(Forwarded):
    """A request forwarded on one of the pool's connections."""

    __slots__ = ("conn", "owed", "tag")

    def __init__(self, tag: int, callback: Callback, on_item: OnItem | None, deadline: Deadline):
        super().__init__(callback, on_item, deadline)
        self.tag = tag
        self.conn: _HttpConnection | None = None
        self.owed = 0  # items relayed and not yet taken by the client


class RemoteClient:
    """Requests to the model server at ``host:port``, from the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, token: str | None,
                 max_reply: int = MAX_REPLY, congested: Callable[[object, bool], None] | None = None,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None):
        self.loop = loop
        self.tls, self.server_name = tls, server_name  # https://: the context and the name to check
        self.congested = congested or (lambda source, on: None)  # told while a connection cannot write
        self.host, self.port = host, port
        self.address = address_of(host, port)
        self.max_reply = max_reply
        self._host_line = f"Host: {self.address}\r\n".encode("latin-1")
        self._token_line = f"{ENDPOINT_TOKEN_HEADER}: {token}\r\n".encode("latin-1") if token else b""
        self._idle: list[_HttpConnection] = []
        self._active: dict[int, _Request] = {}
        self._tags = itertools.count(1)
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def send(self, request_id: str, routed: str, body: bytes, timeout: float, callback: Callback,
             on_item: OnItem | None = None, idle: float = 0.0, total: float = 0.0, wants_stream: bool = False,
             v2: tuple[int | None, str] | None = None, alone: bool = False, job: bool = False,
             pipe: int = 0) -> int | None:
        """POST ``body`` to the server's ``/run``; as :meth:`ChannelClient.send` (each request is
        written at once here: ``alone`` changes nothing; ``pipe``: a pipeline step's flags, sent as
        ``X-Pipeline-Step``, its value answered inline with the pipeline's content type)."""
        if v2 is not None:
            raise ValueError("the Open Inference Protocol is not forwarded to remote model servers")
        now = time.monotonic()
        tag = next(self._tags)
        request = self._active[tag] = _Request(tag, callback, on_item, Deadline(now, timeout, idle, total))
        head = [b"POST /run HTTP/1.1\r\n", self._host_line, self._token_line,
                f"{REQUEST_ID_HEADER}: {request_id}\r\n".encode("latin-1"),
                b"Content-Type: %s\r\nContent-Length: %d\r\n" % (
                    _PIPE_TYPE if pipe & PIPE_IN else b"application/json", len(body))]
        if pipe:
            head.append(f"{PIPE_HEADER}: {pipe & (PIPE_IN | PIPE_OUT)}\r\n".encode("latin-1"))
        if routed:
            head.append(f"{ROUTED_HEADER}: {routed}\r\n".encode("latin-1"))
        if wants_stream:
            head.append(b"Accept: text/event-stream\r\n")
        if job:
            head.append(f"{JOB_HEADER}: 1\r\n".encode("latin-1"))
        head.append(b"\r\n")
        conn = self._reuse(now) or _HttpConnection(self)
        conn.start(request, b"".join(head) + body)
        return tag

    def release(self, tag: int) -> None:
        """A pipeline value answered over HTTP holds nothing on its server (it came inline)."""

    def grant(self, tag: int, items: int) -> None:
        """The client of stream ``tag`` took ``items`` more: read on when it is within the window."""
        request = self._active.get(tag)
        if request is not None and request.conn is not None:
            request.owed = max(0, request.owed - items)
            request.conn.flow(request.owed <= STREAM_WINDOW)

    def cancel(self, tag: int) -> Cancel:
        request = self._active.pop(tag, None)
        if request is None:
            return Cancel.NOT_WAITING
        conn = request.conn
        sent = conn is not None and conn.sent
        if conn is not None:
            conn.abandon()
        return Cancel.SENT if sent else Cancel.UNSENT

    def expire(self, now: float) -> None:
        for tag, request in [(t, r) for t, r in self._active.items() if r.deadline.passed(now)]:
            del self._active[tag]
            if request.conn is not None:
                request.conn.abandon()
            if request.conn is not None and not request.conn.connected:
                request.fail(ConnectFailed(f"cannot connect to {self.address}: timed out"))
            else:
                request.fail(ReadTimedOut(request.deadline.why(now, f"no answer from {self.address} in time")))

    def close(self) -> None:
        self.closed = True
        for conn in self._idle:
            conn.abandon()
        self._idle.clear()

    # -- from the connections ------------------------------------------------------------------
    def _reuse(self, now: float) -> _HttpConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now):
                return conn
            conn.abandon()
        return None

    def _done(self, conn: _HttpConnection, request: _Request, keep: bool, status: int, retry_after: str | None,
              body: bytes, flags: int) -> None:
        if keep and not self.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.abandon()
        if self._active.pop(request.tag, None) is None:
            return
        if status == 503 and (_SHUTTING_DOWN in body or _OVERLOADED in body):
            request.fail(NotRun(self.address, status, retry_after, body))
        elif status == 401:
            request.fail(SecretRefused(f"model server {self.address} refused this gateway: its "
                                       "BIS_ENDPOINT_TOKEN is not the gateway's (set the same secret on both)"))
        elif status == MISROUTED:
            request.callback(Misroute(body))
        else:
            request.callback(Reply(status, retry_after, body, flags))

    def _item(self, request: _Request, data: bytes) -> None:
        if request.tag not in self._active or request.on_item is None:
            return
        request.deadline.item(time.monotonic())
        request.owed += 1
        request.on_item(data)
        if request.conn is not None and request.owed > STREAM_WINDOW:
            request.conn.flow(False)

    def _lost(self, conn: _HttpConnection, error: OSError) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
        request = conn.request
        if request is not None and self._active.pop(request.tag, None) is not None:
            request.fail(error)


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, client: RemoteClient):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.request: _Request | None = None
        self.pending_write = b""
        self.connected = self.sent = self.closed = False
        self.idle_since = 0.0
        self.items = 0
        self._reading = True
        self._reset()
        tls = {} if client.tls is None else {"ssl": client.tls, "server_hostname": client.server_name}
        task = client.loop.create_task(asyncio.wait_for(
            client.loop.create_connection(lambda: self, client.host, client.port, **tls), CONNECT_TIMEOUT))
        task.add_done_callback(self._made)

    def _reset(self) -> None:
        self.status, self.retry_after, self.body, self.size = 0, None, [], 0
        self.stream = False
        self.sse = bytearray()
        self.ending: tuple[int, bytes] | None = None  # a stream's last event: (status, data)
        self.refused: OSError | None = None  # why the answer was given up while parsing it
        self._header_name = b""
        self.content_type = b""

    def _made(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            error = task.exception() if not task.cancelled() else None
            self.closed = True
            reason = "timed out" if isinstance(error, asyncio.TimeoutError) else (str(error) or type(error).__name__)
            self.client._lost(self, ConnectFailed(f"cannot connect to {self.client.address}: {reason}"))

    def usable(self, now: float) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing() \
            and now - self.idle_since < IDLE_MAX

    def start(self, request: _Request, data: bytes) -> None:
        self.request, request.conn = request, self
        self.items = 0
        self._reset()
        if self.transport is None:
            self.pending_write = data
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        self.sent = True
        self.transport.write(data)  # type: ignore[union-attr]

    def flow(self, reading: bool) -> None:
        if self.transport is not None and reading != self._reading and not self.closed:
            self._reading = reading
            if reading:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def abandon(self) -> None:
        """Close without telling anyone (the request was cancelled, answered or timed out)."""
        self.request, self.closed = None, True
        self.client.congested(self, False)
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def pause_writing(self) -> None:
        """The server takes a body slower than clients send them: the front stops reading requests
        (as for a congested channel) until this connection's buffer drains."""
        self.client.congested(self, True)

    def resume_writing(self) -> None:
        self.client.congested(self, False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.connected = transport, True  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=BACKLOG_HIGH, low=BACKLOG_LOW)  # type: ignore[attr-defined]
        if self.closed:
            transport.close()
        elif self.pending_write:
            data, self.pending_write = self.pending_write, b""
            self._write(data)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(self.refused or ConnectionLost(f"model server sent malformed HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed:
            self.closed = True
            self._fail(ConnectionLost("model server closed the connection before answering"
                                      + (f": {exc}" if exc else "")))

    def _fail(self, error: OSError) -> None:
        self.closed = True
        self.client.congested(self, False)
        if self.transport is not None:
            self.transport.close()
        self.client._lost(self, error)
        self.request = None

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.lower()
        elif name == b"retry-after":
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.stream = self.status == 200 and self.content_type.startswith(b"text/event-stream")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if not self.stream:
            if self.size > self.client.max_reply:
                self.refused = ConnectionLost(f"answer over the limit of {self.client.max_reply} bytes")
                raise self.refused  # stops the parser; data_received fails the request with it
            self.body.append(body)
            return
        self.sse += body.replace(b"\r\n", b"\n") if b"\r" in body else body
        if len(self.sse) > self.client.max_reply:
            self.refused = ConnectionLost(f"an item over the limit of {self.client.max_reply} bytes")
            raise self.refused
        while (end := self.sse.find(b"\n\n")) >= 0:
            event, data = b"message", []
            for line in bytes(self.sse[:end]).split(b"\n"):
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"event":
                    event = value
                elif field == b"data":
                    data.append(value)
            del self.sse[:end + 2]
            if not data:
                continue  # a comment or a keep-alive: no event
            payload = b"\n".join(data)
            if event == b"end":
                self.ending = (200, payload)
            elif event == b"error":
                self.ending = (500, payload)
            elif self.request is not None:
                self.items += 1
                self.client._item(self.request, payload)

    def on_message_complete(self) -> None:
        request = self.request
        if request is None:
            return
        self.request = None
        keep = self.parser.should_keep_alive() and self._reading
        if self.stream:
            if self.ending is None:
                self.request = request
                self._fail(ConnectionLost("model server ended a stream without its last event"))
                return
            self.client._done(self, request, keep, self.ending[0], None, self.ending[1], STREAM)
        else:
            self.client._done(self, request, keep, self.status, self.retry_after, b"".join(self.body),
                              PIPED if self.content_type == _PIPE_TYPE else 0)

