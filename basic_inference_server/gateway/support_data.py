"""The latest metrics each support process posted, with the time they arrived.

Posts carry ``SIGNATURE`` and the metrics either nested under ``data`` or flat (the original
template posts flat, the original gateway read only ``data``: both are accepted here).
An entry is stale after 3 × the process's ``PING_INTERVAL``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import BadRequest

STALE_AFTER_INTERVALS = 3
_NOT_METRICS = frozenset({"SIGNATURE", "TOKEN"})


def metrics_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The metrics of a post: ``data`` when it is an object, else every other key."""
    nested = payload.get("data")
    if isinstance(nested, dict):
        metrics = nested
    else:
        metrics = {k: v for k, v in payload.items() if k not in _NOT_METRICS}
    if not metrics:
        raise BadRequest("no metrics in the post: send them flat or under 'data'")
    return metrics


class SupportData:
    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def store(self, name: str, metrics: dict[str, Any]) -> None:
        with self._lock:
            self._latest[name] = (time.monotonic(), time.time(), metrics)

    def view(self, intervals: dict[str, float]) -> dict[str, Any]:
        """``{name: {"data", "received", "age_s", "stale"}}`` for every support process."""
        now = time.monotonic()
        with self._lock:
            latest = dict(self._latest)
        out: dict[str, Any] = {}
        for name, interval in intervals.items():
            if name not in latest:
                out[name] = {"data": None, "received": None, "age_s": None, "stale": True}
                continue
            arrived, wall, metrics = latest[name]
            age = now - arrived
            out[name] = {
                "data": metrics,
                "received": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall)),
                "age_s": round(age, 1),
                "stale": age > STALE_AFTER_INTERVALS * interval,
            }
        return out
