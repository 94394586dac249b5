"""The job system's figures, for ``GET /metrics`` and the dashboard.

The loop counts what it does (attempts, run times, webhook deliveries); the jobs by state and
the age of each endpoint's oldest queued job come from the store, counted every REFRESH seconds
on its thread (never at a scrape: a scrape costs the store nothing).

- ``bis_jobs{signature,state}``: jobs in the store by state;
- ``bis_job_queue_age_seconds{signature}``: how long the oldest queued job has waited;
- ``bis_job_duration_seconds{signature}``: the run time of each attempt that ended with an answer;
- ``bis_job_attempts_total{signature}``: attempts started (a job lost and run again counts twice);
- ``bis_webhook_deliveries_total{outcome}``: delivery attempts, ``delivered`` or ``failed``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ...server.stats import LATENCY_BOUNDS, Histogram
from .backend import Store
from .records import JobState

REFRESH = 5.0


@dataclass
class StoreFigures:
    """What the store holds, counted on its thread."""

    by_state: dict[tuple[str, str], int] = field(default_factory=dict)  # (signature, state) -> jobs
    oldest_queued: dict[str, float] = field(default_factory=dict)  # signature -> its oldest QUEUED job's CREATED
    counted_at: float = 0.0

    @classmethod
    def count(cls, store: Store) -> StoreFigures:
        by_state, oldest = store.figures()
        return cls(by_state, oldest, time.time())


class JobStats:
    def __init__(self) -> None:
        self.store = StoreFigures()
        self.attempts: dict[str, int] = {}
        self.durations: dict[str, Histogram] = {}
        self.deliveries: dict[str, int] = {}
        self.ended: dict[str, int] = {}  # signature -> jobs ended since start (the dashboard's throughput)

    def attempt(self, signature: str) -> None:
        self.attempts[signature] = self.attempts.get(signature, 0) + 1

    def answered(self, signature: str, seconds: float) -> None:
        histogram = self.durations.get(signature)
        if histogram is None:
            histogram = self.durations[signature] = Histogram(LATENCY_BOUNDS)
        histogram.observe(seconds)
        self.ended[signature] = self.ended.get(signature, 0) + 1

    def delivery(self, delivered: bool) -> None:
        outcome = "delivered" if delivered else "failed"
        self.deliveries[outcome] = self.deliveries.get(outcome, 0) + 1

    def queue(self) -> dict[str, dict[str, float]]:
        """Per endpoint: jobs queued and running, and the oldest queued job's age in seconds."""
        figures, now = self.store, time.time()
        signatures = {signature for signature, _state in figures.by_state}
        return {signature: {
            "queued": figures.by_state.get((signature, JobState.QUEUED.value), 0),
            "running": figures.by_state.get((signature, JobState.RUNNING.value), 0),
            "oldest_age_s": round(now - figures.oldest_queued[signature], 3) if signature in figures.oldest_queued
            else 0.0,
            "ended": self.ended.get(signature, 0)} for signature in sorted(signatures)}


class JobsCollector:
    """The figures of :class:`JobStats` as Prometheus metric families."""

    def __init__(self, stats: JobStats):
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats, now = self.stats, time.time()
        jobs = GaugeMetricFamily("bis_jobs", "Jobs in the store by state", labels=["signature", "state"])
        for (signature, state), count in sorted(dict(stats.store.by_state).items()):
            jobs.add_metric([signature, state], count)
        yield jobs
        age = GaugeMetricFamily("bis_job_queue_age_seconds", "How long the oldest queued job has waited",
                                labels=["signature"])
        for signature, created in sorted(dict(stats.store.oldest_queued).items()):
            age.add_metric([signature], max(0.0, now - created))
        yield age
        duration = HistogramMetricFamily("bis_job_duration_seconds", "Run time of job attempts that were answered",
                                         labels=["signature"])
        for signature, histogram in sorted(dict(stats.durations).items()):
            duration.add_metric([signature], histogram.cumulative(), histogram.sum)
        yield duration
        attempts = CounterMetricFamily("bis_job_attempts", "Job attempts started", labels=["signature"])
        for signature, count in sorted(dict(stats.attempts).items()):
            attempts.add_metric([signature], count)
        yield attempts
        deliveries = CounterMetricFamily("bis_webhook_deliveries", "Webhook delivery attempts by outcome",
                                         labels=["outcome"])
        for outcome in ("delivered", "failed"):
            deliveries.add_metric([outcome], stats.deliveries.get(outcome, 0))
        yield deliveries
