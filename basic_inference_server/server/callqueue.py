"""The worker pool's queue of calls, and where its idle workers wait.

A FIFO with a bound on waiting calls (503 past it); control items (a worker's retirement) bypass
the bound. An idle worker waits on the queue's condition, except one: once the channel's
:class:`~.lobby.Lobby` is attached (workers without batching only), the first idle worker when
nobody leads becomes the *leader* and waits at the channel's sockets instead. It queues what it
reads, behind what already waits, takes the first call itself and stops leading; the next worker
to be idle leads. At low load one worker reads and runs every request with no hand-off between
threads; under load, when every worker is busy, the channel's reader thread queues the requests
and the condition wakes the workers, as it would without a leader.

While a worker gathers a batch, a new call wakes it only once the batch can be full (or at the
batch's deadline), not once per call: each wake-up is a thread switch that the threads still
delivering requests would pay for.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from ..errors import Overloaded
from .call import Call
from .lobby import Lobby


class CallQueue:
    def __init__(self, max_calls: int):
        self.max_calls = max_calls
        self.lobby: Lobby | None = None
        self._items: deque[Any] = deque()
        self._calls = 0
        self._wanted = 1  # waiting calls worth waking a worker for
        self._idle = 0  # workers waiting on the condition in take() and not woken yet
        self._leading = False  # a worker waits at the channel's sockets
        self._taking = threading.local()  # .queued: calls the leader queued from what it read
        self._mutex = threading.Lock()  # entered directly: Condition.__enter__ is a Python call
        self._cond = threading.Condition(self._mutex)

    def put(self, call: Call) -> None:
        with self._mutex:
            if self._calls >= self.max_calls:
                raise Overloaded(f"request queue is full ({self.max_calls} waiting); retry later")
            self._calls += 1
            call.enqueued = time.monotonic()
            self._items.append(call)
            queued = getattr(self._taking, "queued", None)
            if queued is not None:  # the leader read it: it takes one itself, and wakes others for the rest
                self._taking.queued = queued + 1
                return
            ring = len(self._items) >= self._wanted and not self._wake_idle(1) and self._leading
        if ring:  # nobody idle but the leader
            self.lobby.ring()

    def put_control(self, item: Any) -> None:
        with self._mutex:
            self._items.append(item)
            self._wake_idle(1)
            ring = self._leading
        if ring:
            self.lobby.ring()

    def _wake_idle(self, count: int) -> int:
        """Wake up to ``count`` idle workers (under the lock); how many were. A worker woken is no
        longer counted idle from now, not from when it runs: a call queued meanwhile must not
        count on it, or it would wait with the leader left asleep."""
        woken = min(count, self._idle)
        if woken:
            self._idle -= woken
            self._cond.notify(woken)
        else:
            self._cond.notify()  # a worker gathering a batch (get_batch), if any
        return woken

    def remove(self, call: Call) -> bool:
        """Take a call out of the queue; False when a worker already has it (or it is done)."""
        with self._mutex:
            try:
                self._items.remove(call)
            except ValueError:
                return False
            self._calls -= 1
            return True

    def take(self) -> Any:
        """The next item for a worker without batching; with the lobby attached, waiting at the
        channel's sockets when nobody else does."""
        lobby = self.lobby
        while True:
            with self._mutex:
                while not self._items:
                    if lobby is not None and not self._leading:
                        self._leading = True
                        break
                    self._idle += 1  # until woken (_wake_idle): a wait without a timeout returns only then
                    self._cond.wait()
                else:
                    return self._pop()
            self._taking.queued = 0  # what this thread queues now, it takes the first of
            try:
                lobby.leader.wait()
            finally:
                queued, self._taking.queued = self._taking.queued, None
                with self._mutex:
                    self._leading = False
                    if queued > 1:
                        self._wake_idle(queued - 1)

    def get_batch(self, max_calls: int, window: float) -> list[Any]:
        """Up to ``max_calls`` calls in arrival order, waiting at most ``window`` seconds, once the
        first is taken, for more to come. A control item is returned alone."""
        with self._mutex:
            while not self._items:
                self._cond.wait()
            first = self._pop()
            if first.__class__ is not Call:
                return [first]
            batch = [first]
            # From now, not from when the first call arrived: a call that waited for the worker
            # would otherwise leave at once with whatever had queued behind it, and closed-loop
            # clients would settle into half batches that never merge again.
            deadline = time.monotonic() + window
            while len(batch) < max_calls:
                if self._items:
                    if self._items[0].__class__ is not Call:
                        break
                    batch.append(self._pop())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wanted = max_calls - len(batch)
                self._cond.wait(remaining)
                self._wanted = 1
            if self._items:
                self._cond.notify()  # what is left is for another worker
            return batch

    def _pop(self) -> Any:
        item = self._items.popleft()
        if item.__class__ is Call:
            self._calls -= 1
        return item

    @property
    def depth(self) -> int:
        return self._calls
