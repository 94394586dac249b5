"""Where a model server waits for the channel's bytes: a leader and a reader (leader/followers).

A request from the gateway used to cost two threads: the channel's reader received it and handed
it to a worker, one wake-up and one thread switch more per request, which is most of what a lone
request (one client at a time) waits for. Here one idle worker, the *leader*, waits at the
channel's sockets itself, and runs the request it reads: no hand-off at all. The other idle
workers wait on the call queue as before (:class:`~.callqueue.CallQueue`), and the next of them to be
idle leads once the leader has taken a call. The channel's own reader thread stays, and reads only
when no leader waits (every worker busy): the requests it queues, the CANCELs and CREDITs of the
running calls are never left unread.

There are two *seats*, each an epoll on which every connection is registered with EPOLLEXCLUSIVE:
the kernel wakes one waiting seat per event, the first registered first, and the leader's is
always registered before the reader's, so the leader reads when it waits. The leader's seat also
watches an eventfd, the *bell*, rung when a call is queued from elsewhere (the HTTP port, the
reader) while only the leader is idle.

The waiting is the same for both; what a readable connection means (read one chunk, dispatch its
frames) is the channel's (``serve``).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from typing import Any

_EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)  # Linux 4.5+; without it both seats wake (still correct)
_READABLE = select.EPOLLIN | _EXCLUSIVE


class Seat:
    """An epoll that one thread at a time waits on: :meth:`wait` returns once it has served a
    readable connection or heard the bell (or after ``timeout``)."""

    def __init__(self, lobby: Lobby, bell: int | None):
        self.lobby = lobby
        self.bell = bell
        self.epoll = select.epoll()
        if bell is not None:
            self.epoll.register(bell, _READABLE)

    def wait(self, timeout: float | None = None) -> None:
        lobby = self.lobby
        for fd, _events in self.epoll.poll(-1 if timeout is None else timeout):
            if fd == self.bell:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(fd)
                continue
            conn = lobby.connections.get(fd)
            if conn is not None:
                lobby.serve(conn)


class Lobby:
    """The channel's connections, the leader's seat and the reader's; ``serve(conn)`` reads and
    dispatches what one readable connection has (any thread, one at a time per connection)."""

    def __init__(self, serve: Callable[[Any], None]):
        self.serve = serve
        self.bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.connections: dict[int, Any] = {}  # fd -> connection
        self.leader = Seat(self, self.bell)  # the idle worker that leads waits here
        self.reader = Seat(self, None)  # the channel's reader thread waits here
        self._lock = threading.Lock()

    def admit(self, conn: Any) -> None:
        """A new connection: the leader's seat waits on it, then the reader's."""
        fd = conn.sock.fileno()
        with self._lock:
            self.connections[fd] = conn
            for seat in (self.leader, self.reader):
                with contextlib.suppress(OSError):  # closed meanwhile: it is being forgotten
                    seat.epoll.register(fd, _READABLE)

    def forget(self, conn: Any, fd: int) -> None:
        """A connection that ended (its socket is closed: the kernel dropped it from both seats)."""
        with self._lock:
            if self.connections.get(fd) is conn:
                del self.connections[fd]

    def ring(self) -> None:
        """Wake the leader (a call was queued while it waits at the sockets)."""
        os.eventfd_write(self.bell, 1)
