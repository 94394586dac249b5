"""Fixed-bucket histograms cheap enough for the hot path, shared by the gateway and the servers.

A model server keeps its figures (model time, time in the queue, batch sizes) in these and
answers them as JSON on ``GET /stats``; the gateway turns them into Prometheus families at
scrape time and uses the same class for the per-interval latencies of the dashboard.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

# Seconds: from a dummy model's fraction of a millisecond to the default 60 s REQUEST_TIMEOUT.
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Counts per bucket (``value <= bound``, plus one overflow bucket), their sum and total."""

    __slots__ = ("_lock", "bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, times: int = 1) -> None:
        with self._lock:
            self.observe_unlocked(value, times)

    def observe_unlocked(self, value: float, times: int = 1) -> None:
        """For an owner that already serialises the calls with a lock of its own."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs ending with ``+Inf``, as Prometheus wants them."""
        return cumulative_buckets(self.to_json())

    def quantile(self, q: float) -> float | None:
        """Estimate of the ``q`` quantile by linear interpolation inside its bucket (as
        Prometheus's ``histogram_quantile``); None when empty."""
        with self._lock:
            counts = list(self.counts)
        total = sum(counts)
        if not total:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(counts):
            if count and seen + count >= rank:
                if index == len(self.bounds):  # the overflow bucket has no upper edge
                    return self.bounds[-1]
                lower = self.bounds[index - 1] if index else 0.0
                return lower + (self.bounds[index] - lower) * (rank - seen) / count
            seen += count
        return self.bounds[-1]


def cumulative_buckets(data: dict[str, Any]) -> list[tuple[str, int]]:
    """Cumulative ``(le, count)`` pairs of a histogram given as :meth:`Histogram.to_json`."""
    out, running = [], 0
    for bound, count in zip(data["bounds"], data["counts"], strict=False):
        running += count
        out.append((_le(bound), running))
    out.append(("+Inf", running + data["counts"][-1]))
    return out


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and bound >= 1 else repr(float(bound))


class ServerStats:
    """What one model server measures about the requests its workers serve."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.model_seconds = Histogram()
        self.queue_seconds = Histogram()
        self.batch_size = Histogram(BATCH_BOUNDS)
        self.cancels: dict[str, int] = {"queued": 0, "running": 0}  # requests whose client left, by stage

    def record_batch(self, waited: list[float], model_seconds: float, batching: bool) -> None:
        """One run of the hooks over ``len(waited)`` requests that waited ``waited`` seconds each
        (one lock for the three histograms: this runs after every request)."""
        with self._lock:
            for seconds in waited:
                self.queue_seconds.observe_unlocked(seconds)
            self.model_seconds.observe_unlocked(model_seconds, len(waited))
            if batching:
                self.batch_size.observe_unlocked(len(waited))

    def cancelled(self, stage: str) -> None:
        """A request dropped because its client left: still ``queued``, or ``running`` (its
        generator was closed)."""
        with self._lock:
            self.cancels[stage] += 1

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"model_seconds": self.model_seconds.to_json(), "queue_seconds": self.queue_seconds.to_json(),
                    "batch_size": self.batch_size.to_json(), "cancelled": dict(self.cancels)}
