"""The gateway's end of the internal channel to one model server (in the HTTP front's event loop).

Requests are written as frames (:mod:`~basic_inference_server.transport.frames`) on one
connection to the server's Unix socket, as many in flight as the gateway admits; each answer
comes back with its request's tag and goes to the callback given with the request. Nothing here
blocks: connecting to a Unix socket is immediate, and writes are queued by the transport.

Every request ends with one :mod:`.outcome` given to its callback: a ``Reply``, a ``Misroute``, or a
``Failure`` with the same three errors as the HTTP client's (:mod:`.upstream`), so that the client
is told what happened: ``ConnectFailed`` (nothing was sent),
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
from collections import deque
from collections.abc import Callable
from enum import Enum

from ...transport.deadline import Deadline
from ...transport.frames import (
    ITEM,
    JOB,
    MISROUTED,
    PIPED,
    RELEASE,
    REPLY,
    STREAM,
    Frame,
    FrameReader,
    ProtocolError,
    cancel_frame,
    credit_frame,
    frame_head,
    request_head,
)
from ...transport.gather import write_gathered
from .outcome import Callback, Forwarded, Misroute, OnItem, Reply
from .upstream import ConnectFailed, ConnectionLost, ReadTimedOut

logger = logging.getLogger(__name__)

MAX_REPLY = 1 << 30  # an answer larger than this (1 GiB) is refused
# Frames waiting to be written past BACKLOG_HIGH bytes make the front stop reading requests until
# they are down to BACKLOG_LOW (the gateway reads no faster than its model servers take what it
# admitted); the transport itself is given at most about BACKLOG_LOW at a time.
BACKLOG_HIGH, BACKLOG_LOW = 8 << 20, 1 << 20
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # an int: or-ing the flags per request goes through enum



class Cancel(Enum):
    """What :meth:`ChannelClient.cancel` did with a request."""

    NOT_WAITING = "not waiting"  # answered, failed or cancelled already: nothing to do
    UNSENT = "unsent"  # dropped before it was written: the model server never saw it
    SENT = "sent"  # the model server was told to skip it, or to close its generator


class ChannelClient:
    """Frames to and from the model server listening on ``path``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, max_reply: int = MAX_REPLY,
                 congested: Callable[[object, bool], None] | None = None):
        self.loop = loop
        self.path = path
        self.max_reply = max_reply
        self.congested = congested or (lambda source, on: None)  # told when frames pile up unsent
        self._conn: _Connection | None = None
        self._tags = itertools.count(1)
        self._waiting: dict[int, Forwarded] = {}  # tag -> a request before its answer or first item, oldest first
        self._streams: dict[int, Forwarded] = {}  # tag -> a request whose items have started

    @property
    def in_flight(self) -> int:
        return len(self._waiting) + len(self._streams)

    def send(self, request_id: str, routed: str, body: bytes, timeout: float, callback: Callback,
             on_item: OnItem | None = None, idle: float = 0.0, total: float = 0.0, wants_stream: bool = False,
             v2: tuple[int | None, str] | None = None, alone: bool = False, job: bool = False,
             pipe: int = 0) -> int | None:
        """Write one request; its answer (or its first item) is due within ``timeout``. The answer
        goes to ``callback``, the items of a streamed answer to ``on_item`` (each to be
        acknowledged with :meth:`grant`), due ``idle`` seconds apart and all within ``total`` of
        the request. ``wants_stream``: the client asked for a stream; ``v2``: an Open Inference
        Protocol infer request, its JSON header length and model version; ``alone``: it is the only
        request the gateway has in flight, so it is written at once rather than at the end of the
        loop's turn (where the frames of a burst of requests go out in one write); ``job``: a
        durable job's body (the server leaves its own fields out of the inputs); ``pipe``: a pipeline
        step's flags (PIPE_IN, PIPE_OUT). Returns the request's tag
        (for :meth:`cancel`), or None when it failed at once (``callback`` has been told)."""
        conn = self._conn
        if conn is not None and not self.in_flight and not conn.alive():
            conn.close()
            conn = None
        if conn is None:
            try:
                conn = self._conn = _Connection(self)
            except OSError as exc:
                Forwarded(callback, on_item, Deadline(0, 0)).fail(
                    ConnectFailed(f"cannot connect to {self.path}: {exc.strerror or exc}"))
                return None
        tag = next(self._tags) & 0xFFFFFFFF
        waiting = self._waiting
        waiting[tag] = Forwarded(callback, on_item, Deadline(time.monotonic(), timeout, idle, total))
        flags = (STREAM if wants_stream else 0) | (JOB if job else 0) | pipe
        head = request_head(tag, request_id, routed, len(body), flags, v2)
        if alone and conn.write_now(head, body):
            return tag
        conn.write(head, body, tag)
        return tag

    def grant(self, tag: int, items: int) -> None:
        """The client of stream ``tag`` has taken ``items`` more: the server may send as many."""
        if tag in self._streams and self._conn is not None:
            self._conn.write(credit_frame(tag, items), b"")

    def release(self, tag: int) -> None:
        """The pipeline value request ``tag`` answered is no longer needed: its server frees the
        shared memory that holds it (on a connection since replaced, that went with the old one)."""
        if self._conn is not None:
            self._conn.write(frame_head(RELEASE, tag, 0), b"")

    def cancel(self, tag: int) -> Cancel:
        """Forget request ``tag`` (its client left): dropped here if it has not been written yet,
        else the server is told to skip it, or to close its generator. Its callback is not called."""
        if self._waiting.pop(tag, None) is None and self._streams.pop(tag, None) is None:
            return Cancel.NOT_WAITING
        if self._conn is None:
            return Cancel.UNSENT
        if self._conn.unsend(tag):
            return Cancel.UNSENT
        self._conn.write(cancel_frame(tag), b"")
        return Cancel.SENT

    def expire(self, now: float) -> None:
        """Fail the requests whose deadline has passed (called periodically by the loop)."""
        waiting = self._waiting
        while waiting:  # oldest first: the first one not due ends the look
            tag, pending = next(iter(waiting.items()))
            if not pending.deadline.passed(now):
                break
            del waiting[tag]
            self._give_up(tag)
            pending.fail(ReadTimedOut(f"no answer from {self.path} in time"))
        for tag, stream in [(tag, stream) for tag, stream in self._streams.items() if stream.deadline.passed(now)]:
            del self._streams[tag]
            self._give_up(tag)
            stream.fail(ReadTimedOut(stream.deadline.why(now)))

    def _give_up(self, tag: int) -> None:
        if self._conn is not None and not self._conn.unsend(tag):
            self._conn.write(cancel_frame(tag), b"")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    # -- from the connection -----------------------------------------------------------------------
    def _answer(self, frame: Frame) -> None:
        tag = frame.tag
        pending = self._waiting.pop(tag, None) or self._streams.pop(tag, None)
        if pending is None:  # timed out or cancelled already: a pipeline value it holds is not wanted
            if frame.flags & PIPED and frame.status == 200:
                self.release(tag)
            return
        if frame.oversize:
            pending.fail(ConnectionLost(f"answer of {frame.oversize} bytes is over the limit of {self.max_reply}"))
        elif frame.status == MISROUTED:
            pending.callback(Misroute(frame.body))
        else:
            meta = frame.meta.decode("ascii", "replace") or None
            pending.callback(Reply(frame.status, meta, frame.body, frame.flags))

    def _item(self, frame: Frame) -> None:
        tag = frame.tag
        stream = self._streams.get(tag)
        if stream is None:
            stream = self._waiting.get(tag)
            if stream is None or stream.on_item is None:
                return  # timed out or cancelled already (or nobody here reads items)
            self._streams[tag] = self._waiting.pop(tag)
        if frame.oversize:
            del self._streams[tag]
            self._give_up(tag)
            stream.fail(ConnectionLost(f"an item of {frame.oversize} bytes is over the limit of {self.max_reply}"))
            return
        stream.deadline.item(time.monotonic())
        stream.on_item(frame.body)

    def _lost(self, conn: _Connection, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
        waiting, self._waiting = self._waiting, {}
        streams, self._streams = self._streams, {}
        for pending in [*waiting.values(), *streams.values()]:
            pending.fail(ConnectionLost(reason))


class _Connection(asyncio.BufferedProtocol):
    """One connection to the server's socket; requests written before it is ready wait here.
    Answers are received into the frame reader's memory (a large one into a buffer of its own),
    requests go out as gathered writes (a frame's head and body are never joined)."""

    def __init__(self, client: ChannelClient):
        self.client = client
        self.reader = FrameReader(client.max_reply)
        self.transport: asyncio.Transport | None = None
        self.unsent: deque[tuple[int | None, bytes, bytes]] = deque()  # (tag, head, body) not yet written
        self.unsent_bytes = 0
        self._flush_due = False
        self._congested = False  # the front was told to hold back because of this connection
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
            self.sock.recv(1, _PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def write(self, head: bytes, body: bytes, tag: int | None = None) -> None:
        """Queue a frame. Frames are handed to the transport a burst at a time, one write for all
        those of a turn of the loop (a burst of requests wakes the model server once), and only
        while the transport holds less than BACKLOG_LOW: the rest wait here, where a request
        whose client leaves can still be dropped unsent (:meth:`unsend`)."""
        self.unsent.append((tag, head, body))
        self.unsent_bytes += len(head) + len(body)
        if self.unsent_bytes > BACKLOG_HIGH:
            self._congest(True)
        if self.transport is not None and not self._flush_due:
            self._flush_due = True
            self.client.loop.call_soon(self._flush)

    def write_now(self, head: bytes, body: bytes) -> bool:
        """Write a frame at once when nothing waits to be written before it (False: it was not
        written; :meth:`write` queues it)."""
        transport = self.transport
        if self.unsent or transport is None or self.closed:
            return False
        write_gathered(transport, self.sock.fileno(), (head, body) if body else (head,))
        return True

    def _congest(self, on: bool) -> None:
        if on != self._congested:
            self._congested = on
            self.client.congested(self, on)

    def unsend(self, tag: int) -> bool:
        """Drop the frame of request ``tag`` if it has not been written yet."""
        for index, (queued, head, body) in enumerate(self.unsent):
            if queued == tag:
                del self.unsent[index]
                self.unsent_bytes -= len(head) + len(body)
                if self.unsent_bytes < BACKLOG_LOW:
                    self._congest(False)
                return True
        return False

    def _flush(self) -> None:
        self._flush_due = False
        transport = self.transport
        if transport is None or self.closed:
            return
        buffers, room = [], BACKLOG_LOW - transport.get_write_buffer_size()
        while self.unsent and room > 0:
            _tag, head, body = self.unsent.popleft()
            size = len(head) + len(body)
            self.unsent_bytes -= size
            room -= size
            buffers += (head, body) if body else (head,)
        if buffers:
            write_gathered(transport, self.sock.fileno(), buffers)
        if self.unsent_bytes < BACKLOG_LOW:
            self._congest(False)

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=BACKLOG_LOW, low=BACKLOG_LOW // 4)  # type: ignore[attr-defined]
        self._flush()

    def resume_writing(self) -> None:
        if self.unsent and not self._flush_due:  # the transport has room again: hand it more
            self._flush_due = True
            self.client.loop.call_soon(self._flush)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self.reader.filled(nbytes)
        except ProtocolError as exc:
            self._fail(f"model server sent something that is not a frame: {exc}")
            return
        for frame in frames:
            if frame.kind == REPLY:
                self.client._answer(frame)
            elif frame.kind == ITEM:
                self.client._item(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("model server closed the connection before answering" + (f": {exc}" if exc else ""))

    def _fail(self, reason: str) -> None:
        self._congest(False)
        if not self.closed:
            self.close()
        self.client._lost(self, reason)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()
