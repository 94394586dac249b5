"""Counting the requests a process is serving (the gateway per endpoint and in all, a model
server for its drain): :class:`InFlight`.

Every HTTP port of the project is served by :mod:`~basic_inference_server.transport.httpfront`
(an event loop with httptools, never Werkzeug's development server): the gateway's and, since
remote endpoints call it, each model server's.
"""

from __future__ import annotations

import threading


class InFlight:
    """Counts requests being served (:meth:`enter` and :meth:`exit`), so that a shutdown can wait
    for them, and bounds them without blocking (:meth:`try_enter`)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self._count += 1

    def try_enter(self, limit: int) -> bool:
        """Count one more request unless ``limit`` are already in; never waits."""
        with self._lock:
            if self._count >= limit:
                return False
            self._count += 1
            return True

    def exit(self) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count
