"""The model server's end of the internal channel: frames from the gateway on a Unix socket.

One thread accepts. A connection's bytes are received by whichever thread waits at the sockets
when they come (:mod:`.lobby`): an idle worker, which then runs the request it read itself (no
hand-off), or, when every worker is busy, the channel's reader thread, which queues it. Either
receives into the frame reader's memory (a large body straight into a buffer of its own) and
dispatches the frames of what it read in order, one thread at a time per connection: a REQUEST
goes to the handler, which queues it for the worker pool without waiting, a CANCEL and a CREDIT
to the call they name. The answer is written back by whichever thread finishes the request (a
worker, or the reading thread for an immediate error), under the connection's send lock, as
gathered writes: a header and its body are never joined.

The socket file is created private to this user (mode 0600, in a folder the gateway made 0700)
and removed when the server stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..httpserve import InFlight
from ..transport import pipedata
from ..transport.frames import (
    BINARY,
    CANCEL,
    CREDIT,
    ITEM,
    JOB,
    OPENAI,
    PIPE_FLAGS,
    PIPED,
    PLAIN,
    RELEASE,
    REQUEST,
    STREAM,
    V2,
    Frame,
    FrameReader,
    ProtocolError,
    frame_head,
    reply_head,
)
from ..transport.gather import Buffer, send_gathered
from ..webutil import Answer
from .lobby import Lobby

logger = logging.getLogger(__name__)


_together = threading.local()


class replies_together:  # noqa: N801 - used as a function: ``with replies_together():``
    """Answers given on this thread inside the block are sent at its end, one write per
    connection (a worker finishing a batch answers all its requests at once). A class, not a
    generator: it is entered once per call a worker answers."""

    __slots__ = ("connections",)

    def __enter__(self) -> None:
        _together.connections = self.connections = {}

    def __exit__(self, *exc: object) -> None:
        _together.connections = None
        for conn in self.connections:
            conn.send_pending()


class Connection:
    """One connection from the gateway: requests in, answers out (from any thread)."""

    def __init__(self, sock: socket.socket, max_body: int):
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = FrameReader(max_body)  # used under read_lock only
        self.read_lock = threading.Lock()  # one thread reads and dispatches at a time: frames stay in order
        self.pending: dict[int, Any] = {}  # tag -> the call queued for it (to cancel it, to credit its stream)
        self.held: dict[int, list[int]] = {}  # tag -> the memfds of the pipeline value it answered, until RELEASE
        self.closed = False
        self._send_lock = threading.Lock()
        self._outbox: list[Buffer] = []  # frames (heads and bodies) waiting for the thread that is sending
        self._sending = False

    def reply(self, tag: int, status: int, body: bytes, retry_after: str | None = None) -> None:
        """Send the answer of request ``tag`` (any thread); a gateway that went away is not an
        error here. Answers given while another thread is sending leave with its next write,
        and those given inside :func:`replies_together` at its end: one system call, and one
        wake-up of the gateway, for a burst of answers."""
        self.pending.pop(tag, None)
        self.queue(reply_head(tag, status, len(body), retry_after or ""), body)
        self.push()

    def reply_parts(self, tag: int, parts: list[Any], flags: int, meta: str) -> None:
        """Send an answer given as pieces (a V2 answer's JSON header and its tensors), each piece
        as it is, in the same gathered write as the other frames queued."""
        self.pending.pop(tag, None)
        self.queue(reply_head(tag, 200, sum(len(p) for p in parts), meta, flags), *parts)
        self.push()

    def queue(self, *pieces: Buffer) -> None:
        """Add a frame (its head, then its body's pieces) to what goes out next (never blocks:
        frames queued in order leave in order)."""
        with self._send_lock:
            if not self.closed:
                self._outbox += pieces

    def queue_item(self, tag: int, body: bytes) -> None:
        self.queue(frame_head(ITEM, tag, len(body)), body)

    def push(self) -> None:
        """Write what is queued: now, or at the end of :func:`replies_together` on this thread."""
        together = getattr(_together, "connections", None)
        if together is not None:
            together[self] = None
        else:
            self.send_pending()

    def send_pending(self) -> None:
        with self._send_lock:
            if self._sending:
                return  # the thread that is sending takes these too
            self._sending = True
        while True:
            with self._send_lock:
                pieces, self._outbox = self._outbox, []
                if not pieces or self.closed:
                    self._sending = False
                    return
            try:
                send_gathered(self.sock, pieces)
            except OSError as exc:
                logger.warning("Channel: answers not delivered: %s", exc)
                with self._send_lock:
                    self.closed, self._sending = True, False
                    self._outbox.clear()
                return

    def hold(self, tag: int, fds: list[int]) -> None:
        """Keep the memfds of a pipeline value answered to ``tag`` until the gateway releases it."""
        if fds:
            with self._send_lock:
                closed = self.closed
                if not closed:
                    self.held[tag] = fds
            if closed:
                pipedata.release(fds)

    def release(self, tag: int) -> None:
        with self._send_lock:
            fds = self.held.pop(tag, None)
        pipedata.release(fds or [])

    def close(self) -> None:
        with self._send_lock:
            self.closed = True
            held, self.held = self.held, {}
        for fds in held.values():  # the gateway is gone: nobody will read these values
            pipedata.release(fds)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@dataclass(slots=True)  # made per request: a frozen dataclass costs 4x to build
class ChannelRequest:
    """One REQUEST frame, decoded."""

    tag: int
    request_id: str
    routed: str  # the endpoint the gateway routed it to
    body: bytes
    oversize: int  # the body's length when it was over the limit (and not kept), else 0
    stream: bool  # the client asked for a streamed answer
    v2: tuple[int | None, str] | None  # an Open Inference Protocol request: its JSON header length, model version
    job: bool = False  # a durable job's body: its own fields are not inputs
    pipe: int = 0  # a pipeline step's flags: PIPE_IN (the body is its input), PIPE_OUT (answer with its value)
    openai: bool = False  # a request of OpenAI's API (/v1)


# handler(connection, request): answers at once with connection.reply(...), or records the call in
# connection.pending[request.tag] before queuing it.
RequestHandler = Callable[[Connection, ChannelRequest], None]


class ChannelOutlet:
    """Where the answer of a request from the channel goes (:class:`~.runpath.Outlet`): frames
    on its connection, tagged with its tag."""

    __slots__ = ("conn", "inflight", "tag")

    def __init__(self, conn: Connection, tag: int, inflight: InFlight):
        self.conn, self.tag, self.inflight = conn, tag, inflight

    def whole(self, answer: Answer) -> None:
        status, body, headers = answer
        self.conn.reply(self.tag, status, body, headers.get("Retry-After") if headers else None)

    def parts(self, parts: list[Any], header_length: int) -> None:
        self.conn.reply_parts(self.tag, parts, BINARY, str(header_length))

    def piped(self, parts: list[Any], fds: list[int]) -> None:
        self.conn.hold(self.tag, fds)  # (before the answer: the gateway may release it as soon as it has it)
        self.conn.reply_parts(self.tag, parts, PIPED, "")

    def send_item(self, item: bytes) -> None:
        self.conn.queue_item(self.tag, item)

    def push(self) -> None:
        self.conn.push()

    def end(self, status: int, body: bytes, plain: bool = False) -> None:
        # Until now the call stayed pending, to receive the credit its kept items waited for.
        self.conn.pending.pop(self.tag, None)
        flags = (STREAM | (PLAIN if plain else 0)) if status == 200 else 0
        self.conn.queue(reply_head(self.tag, status, len(body), "", flags), body)

    def dropped(self) -> None:
        self.conn.pending.pop(self.tag, None)  # the gateway gave up on it: nobody reads an answer

    def delivered(self) -> None:
        self.inflight.exit()


class ChannelServer:
    """Listens on ``path`` and serves frames with ``handler`` until :meth:`close`."""

    def __init__(self, path: str, handler: RequestHandler, max_body: int, cancel: Callable[[Any], None]):
        self.path = path
        self.handler = handler
        self.cancel = cancel  # called with the call of a CANCEL frame
        self.max_body = max_body
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a server of this port that was killed
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(path)
        finally:
            os.umask(old_umask)
        self._listener.listen(64)
        self._closed = False
        self.lobby = Lobby(self._serve)  # where the threads that read the connections wait

    def start(self) -> None:
        threading.Thread(target=self._accept_loop, name="channel-accept", daemon=True).start()
        threading.Thread(target=self._read_loop, name="channel-read", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and remove the socket file; open connections stay until the process ends
        (answers of requests in flight still go out)."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                logger.exception("Channel: accept failed")
                continue
            conn = Connection(sock, self.max_body)
            self.lobby.admit(conn)

    def _read_loop(self) -> None:
        """The reader of last resort: woken only when no worker waits at the sockets."""
        seat = self.lobby.reader
        while True:
            seat.wait()

    def _serve(self, conn: Connection) -> None:
        """Read what ``conn`` has (one chunk, without waiting) and dispatch the frames it completes,
        in order; on any thread the lobby woke, one at a time per connection."""
        with conn.read_lock:
            if conn.closed:  # its answers could not be sent: it ends here (a socket left open stays readable)
                self._end(conn, None)
                return
            reader = conn.reader
            try:
                count = conn.sock.recv_into(reader.get_buffer(), 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return  # another thread read it first
            except OSError as exc:
                self._end(conn, f"Channel: connection lost: {exc}")
                return
            if not count:
                self._end(conn, "Channel: the gateway closed the connection in the middle of a frame"
                          if reader.pending else None)
                return
            try:
                for frame in reader.filled(count):
                    self._dispatch(conn, frame)
            except ProtocolError as exc:
                logger.error("Channel: %s; closing the connection", exc)
                self._end(conn, None)

    def _dispatch(self, conn: Connection, frame: Frame) -> None:
        pending = conn.pending
        if frame.kind == REQUEST:
            request_id, routed = frame.request_meta()
            v2 = frame.v2_meta() if frame.flags & V2 else None
            self.handler(conn, ChannelRequest(frame.tag, request_id, routed, frame.body, frame.oversize,
                                              bool(frame.flags & STREAM), v2, bool(frame.flags & JOB),
                                              frame.flags & PIPE_FLAGS, bool(frame.flags & OPENAI)))
        elif frame.kind == CANCEL:
            call = pending.pop(frame.tag, None)
            if call is not None:
                self.cancel(call)
        elif frame.kind == CREDIT:
            call = pending.get(frame.tag)
            if call is not None and call.stream is not None:
                call.stream.grant(frame.status)
        elif frame.kind == RELEASE:
            conn.release(frame.tag)
        else:
            raise ProtocolError(f"unexpected frame kind {frame.kind} from the gateway")

    def _end(self, conn: Connection, warning: str | None) -> None:
        """Nobody waits for the answers of this connection any more: skip what is still queued,
        close the generators that still stream to it."""
        if warning and not conn.closed:
            logger.warning(warning)
        conn.close()
        self.lobby.forget(conn, conn.fd)
        for call in list(conn.pending.values()):
            self.cancel(call)
