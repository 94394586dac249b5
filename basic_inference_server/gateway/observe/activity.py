"""Requests per second and latency per ``SIGNATURE`` over the last minutes, for the dashboard.

The gateway counts every ``/run`` into the current interval (5 s); when an interval ends it is
kept in a ring of the last 10 minutes. Rolling happens lazily, on the next count or read, so no
thread is needed and an idle gateway does no work.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from ...server.stats import Histogram

INTERVAL = 5.0
KEEP = 120  # intervals: 10 minutes


class _Tally:
    __slots__ = ("client_errors", "latency", "requests", "server_errors")

    def __init__(self) -> None:
        self.requests = 0
        self.client_errors = 0  # 4xx: the caller's mistake (bad input, unknown signature)
        self.server_errors = 0  # 5xx: the model's or the service's
        self.latency = Histogram()


class Activity:
    def __init__(self, interval: float = INTERVAL, keep: int = KEEP, clock: Any = time.time):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._start = self._slot(clock())
        self._current: dict[str, _Tally] = {}
        self._done: deque[tuple[float, dict[str, _Tally]]] = deque(maxlen=keep)

    def _slot(self, now: float) -> float:
        return now - now % self.interval

    def _roll(self, now: float) -> None:
        slot = self._slot(now)
        if slot <= self._start:
            return
        self._done.append((self._start, self._current))
        idle = min(round((slot - self._start) / self.interval) - 1, self._done.maxlen or 0)
        for back in range(idle, 0, -1):  # intervals without a request count as zero
            self._done.append((slot - back * self.interval, {}))
        self._start, self._current = slot, {}

    def count(self, signature: str, status: int, seconds: float) -> None:
        with self._lock:
            self._roll(self.clock())
            tally = self._current.get(signature)
            if tally is None:
                tally = self._current[signature] = _Tally()
            tally.requests += 1
            if status >= 500:
                tally.server_errors += 1
            elif status >= 400:
                tally.client_errors += 1
            tally.latency.observe_unlocked(seconds)  # already under this lock: one lock per /run, not two

    def series(self) -> dict[str, Any]:
        """Finished intervals, oldest first: ``{"interval_s", "t": [start...], "signatures":
        {sig: {"rps": [...], "client_errors_per_s": [...], "server_errors_per_s": [...], "p50_ms": [...],
        "p99_ms": [...]}}}`` (client errors: 4xx, server errors: 5xx)
        (latencies are None where there was no request)."""
        with self._lock:
            self._roll(self.clock())
            done = list(self._done)
        names = sorted({name for _, tallies in done for name in tallies})
        out: dict[str, Any] = {"interval_s": self.interval, "t": [start for start, _ in done], "signatures": {}}
        for name in names:
            rows = [tallies.get(name) for _, tallies in done]
            out["signatures"][name] = {
                "rps": [round(t.requests / self.interval, 2) if t else 0.0 for t in rows],
                "client_errors_per_s": [round(t.client_errors / self.interval, 2) if t else 0.0 for t in rows],
                "server_errors_per_s": [round(t.server_errors / self.interval, 2) if t else 0.0 for t in rows],
                "p50_ms": [_ms(t.latency.quantile(0.5)) if t else None for t in rows],
                "p99_ms": [_ms(t.latency.quantile(0.99)) if t else None for t in rows],
            }
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
