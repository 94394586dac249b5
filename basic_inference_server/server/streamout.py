"""The items of one streamed answer on their way out of a model server, bounded by the client's credit.

Backpressure: a :class:`StreamOut` sends an item only while it holds credit (the gateway gives
one back per item its client has taken, :mod:`~basic_inference_server.transport.frames`; the HTTP
port, per item its client's socket took). Items without credit wait in a small backlog; past it,
``put`` blocks the worker's thread until the client reads or leaves (or the gateway's
``STREAM_IDLE_TIMEOUT`` gives up on it). A single stream has no backlog (the generator waits at
once); a batch has ``BATCH_BACKLOG`` items per request, so that one slow reader slows the other
requests of its batch only once it is that far behind.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from ..transport.frames import STREAM_WINDOW

BATCH_BACKLOG = 32


class StreamOut:
    """The items of one streamed request on their way out, bounded by the client's credit.

    ``send(item)`` queues an item for the wire and must not block (it is called under this
    stream's lock, which keeps the items in order whichever thread sends them); ``push()``, called
    after the lock is released, writes what was queued.
    """

    def __init__(self, send: Callable[[bytes], None], push: Callable[[], None], window: int = STREAM_WINDOW,
                 backlog: int = 0):
        self._send = send
        self._push = push
        self.credit = window
        self.backlog = backlog
        self.count = 0  # items accepted (sent or waiting)
        self.cancelled = False
        self._waiting: deque[bytes] = deque()
        self._final: Callable[[], None] | None = None
        self._cond = threading.Condition(threading.Lock())

    def put(self, item: bytes) -> bool:
        """Send ``item`` (JSON) when there is credit, else keep it; wait while more than the
        backlog is kept. False when the client has left (the item is dropped)."""
        with self._cond:
            if self.cancelled:
                return False
            self.count += 1
            self._waiting.append(item)
            sent = self._send_waiting()
            while len(self._waiting) > self.backlog and not self.cancelled:
                self._cond.wait()
            cancelled = self.cancelled
        if sent:
            self._push()
        return not cancelled

    def end(self, final: Callable[[], None]) -> None:
        """Queue the stream's last frame with ``final()`` once every kept item has been sent
        (at once, or when the credit for the last of them comes); never if the client left."""
        with self._cond:
            if self.cancelled:
                return
            if self._waiting:
                self._final = final
                return
            final()
        self._push()

    def grant(self, items: int) -> None:
        """The client has taken ``items`` more (a CREDIT frame): send what waits for them."""
        with self._cond:
            self.credit += items
            sent = self._send_waiting()
            if self._final is not None and not self._waiting:
                self._final()
                self._final, sent = None, True
            self._cond.notify_all()
        if sent:
            self._push()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._waiting.clear()
            self._final = None
            self._cond.notify_all()

    def _send_waiting(self) -> bool:
        """Send what the credit allows; True when something was sent."""
        sent = False
        while self._waiting and self.credit > 0:
            self._send(self._waiting.popleft())
            self.credit -= 1
            sent = True
        return sent
