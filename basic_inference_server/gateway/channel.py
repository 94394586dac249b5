"""The gateway's end of the internal channel to one model server (in the HTTP front's event loop).

Requests are written as frames (:mod:`~basic_inference_server.transport.frames`) on one
connection to the server's Unix socket, as many in flight as the gateway admits; each answer
comes back with its request's tag and goes to the callback given with the request. Nothing here
blocks: connecting to a Unix socket is immediate, and writes are queued by the transport.

Failures reach the callback as the same three errors as the HTTP client's (:mod:`.upstream`),
so that the client is told what happened: ``ConnectFailed`` (nothing was sent),
``ConnectionLost`` (the connection closed before the answer: the server died or restarted) and
``ReadTimedOut`` (no answer within the request's timeout; a CANCEL frame tells the server to
skip it). Before a
request goes out on a connection that had nothing in flight, the socket is peeked: a server
that closed it meanwhile is never sent a request on the dead connection. Requests are never
retried: ``/run`` is not idempotent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from ..transport.frames import REPLY, Frame, FrameReader, ProtocolError, cancel_frame, request_head
from .upstream import ConnectFailed, ConnectionLost, ReadTimedOut

logger = logging.getLogger(__name__)

MAX_REPLY = 1 << 30  # an answer larger than this (1 GiB) is refused


# callback(status, retry_after, body) on an answer, callback(<a TransportError>, None, b"") on failure
Callback = Callable[[Any, "str | None", bytes], None]


class ChannelClient:
    """Frames to and from the model server listening on ``path``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, max_reply: int = MAX_REPLY):
        self.loop = loop
        self.path = path
        self.max_reply = max_reply
        self._conn: _Connection | None = None
        self._tags = itertools.count(1)
        self._waiting: dict[int, tuple[float, Callback]] = {}  # tag -> (deadline, callback), oldest first

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def send(self, request_id: str, routed: str, body: bytes, timeout: float, callback: Callback) -> None:
        conn = self._conn
        if conn is not None and not self._waiting and not conn.alive():
            conn.close()
            conn = None
        if conn is None:
            try:
                conn = self._conn = _Connection(self)
            except OSError as exc:
                callback(ConnectFailed(f"cannot connect to {self.path}: {exc.strerror or exc}"), None, b"")
                return
        tag = next(self._tags) & 0xFFFFFFFF
        self._waiting[tag] = (time.monotonic() + timeout, callback)
        conn.write(request_head(tag, request_id, routed, len(body)), body)

    def expire(self, now: float) -> None:
        """Fail the requests whose deadline has passed (called periodically by the loop)."""
        waiting = self._waiting
        while waiting:
            tag, (deadline, callback) = next(iter(waiting.items()))
            if deadline > now:
                return
            del waiting[tag]
            if self._conn is not None:
                self._conn.write(cancel_frame(tag), b"")
            callback(ReadTimedOut(f"no answer from {self.path} in time"), None, b"")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    # -- from the connection -----------------------------------------------------------------------
    def _answer(self, frame: Frame) -> None:
        entry = self._waiting.pop(frame.tag, None)
        if entry is None:
            return  # timed out already
        if frame.oversize:
            entry[1](ConnectionLost(f"answer of {frame.oversize} bytes is over the limit of {self.max_reply}"),
                     None, b"")
            return
        entry[1](frame.status, frame.meta.decode("ascii", "replace") or None, frame.body)

    def _lost(self, conn: _Connection, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
        waiting, self._waiting = self._waiting, {}
        for _deadline, callback in waiting.values():
            callback(ConnectionLost(reason), None, b"")


class _Connection(asyncio.Protocol):
    """One connection to the server's socket; requests written before it is ready wait here."""

    def __init__(self, client: ChannelClient):
        self.client = client
        self.reader = FrameReader(client.max_reply)
        self.transport: asyncio.Transport | None = None
        self.backlog: list[bytes] = []  # frames not written yet
        self._flush_due = False
        self.closed = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect(client.path)  # a Unix socket connects at once, or fails at once
        except OSError:
            sock.close()
            raise
        self.sock = sock
        task = client.loop.create_task(client.loop.create_unix_connection(lambda: self, sock=sock))
        task.add_done_callback(self._made)

    def _made(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            self._fail(f"cannot use the connection to {self.client.path}: {task.exception()}")

    def alive(self) -> bool:
        """False when the server has closed the connection (or sent what nobody asked for)."""
        if self.closed:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def write(self, head: bytes, body: bytes) -> None:
        """Queue a frame; the frames of one turn of the loop leave in one write, so that a burst
        of requests wakes the model server once, not once per request."""
        self.backlog += (head, body)
        if self.transport is not None and not self._flush_due:
            self._flush_due = True
            self.client.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        if self.transport is not None and self.backlog:
            self.transport.writelines(self.backlog)
            self.backlog = []

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ProtocolError as exc:
            self._fail(f"model server sent something that is not a frame: {exc}")
            return
        for frame in frames:
            if frame.kind == REPLY:
                self.client._answer(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("model server closed the connection before answering" + (f": {exc}" if exc else ""))

    def _fail(self, reason: str) -> None:
        if not self.closed:
            self.close()
        self.client._lost(self, reason)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()
