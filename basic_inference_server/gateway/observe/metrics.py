"""``GET /metrics``: the gateway's and its children's figures in Prometheus text format.

The gateway counts what it sees itself (requests by ``SIGNATURE`` and status, their total
latency). What happens inside a model server (model time, time in the queue, batch sizes,
workers) is fetched from each server's ``GET /stats`` when Prometheus scrapes, so every figure
is the real one of its process, and children that restarted start their counters again from
zero (which Prometheus's ``rate`` handles). Memory and CPU come from psutil for the gateway and
every child process tree.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ...server.stats import LATENCY_BOUNDS, cumulative_buckets
from ...server.stats import Histogram as StatsHistogram
from ..remote.handle import RemoteHandle, RemoteState
from ..routing.routes import RouteTable
from ..supervision.handle import READY, ChildHandle, ChildState
from .activity import Activity
from .sysinfo import process_tree_usage

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_SIGNATURE = "(none)"  # body without a usable SIGNATURE
UNKNOWN_SIGNATURE = "(unknown)"  # a SIGNATURE that is not configured: one label, not one per typo
STATS_TIMEOUT = 1.0
STATES = tuple(state.value for state in ChildState)
REMOTE_STATES = tuple(state.value for state in RemoteState)
ITEM_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _histogram(table: dict[Any, StatsHistogram], key: Any, bounds: tuple[float, ...]) -> StatsHistogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = StatsHistogram(bounds)
    return histogram


class GatewayMetrics:
    """The gateway's own counts of ``/run`` plus a collector for its children, in one registry."""

    def __init__(self, routes: RouteTable):
        self.routes = routes  # the children and remote servers, as the supervisor and the remote pool publish them
        self.registry = CollectorRegistry(auto_describe=True)
        self._counts: dict[tuple[str, int], int] = {}  # (signature, status) -> answers
        self._latency: dict[str, StatsHistogram] = {}
        self._first_item: dict[str, StatsHistogram] = {}  # streams: time to the first item
        self._stream_items: dict[str, StatsHistogram] = {}  # streams: items per stream
        self._pipeline_steps: dict[tuple[str, str], StatsHistogram] = {}  # (pipeline, step) -> sent to answered
        self.active_streams: dict[str, int] = {}
        self._cancelled: dict[tuple[str, str], int] = {}  # (signature, stage) -> dropped before a server saw them
        self.registry.register(_RunCollector(self))
        self.registry.register(_ChildrenCollector(routes, self._cancelled))
        self.activity = Activity()

    def observe(self, signature: str, status: int, seconds: float) -> None:
        """Count one answered ``/run``. Only the HTTP front's event loop calls this, so the counts
        take no lock; a scrape reads them as they are at that instant."""
        key = (signature, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        _histogram(self._latency, signature, LATENCY_BOUNDS).observe_unlocked(seconds)
        self.activity.count(signature, status, seconds)

    def stream_started(self, signature: str, first_item_seconds: float) -> None:
        _histogram(self._first_item, signature, LATENCY_BOUNDS).observe_unlocked(first_item_seconds)
        self.active_streams[signature] = self.active_streams.get(signature, 0) + 1

    def stream_ended(self, signature: str, items: int) -> None:
        _histogram(self._stream_items, signature, ITEM_BOUNDS).observe_unlocked(items)
        self.active_streams[signature] -= 1

    def pipeline_step(self, pipeline: str, step: str, seconds: float) -> None:
        """One step of a pipeline request answered (the event loop's, as :meth:`observe`)."""
        _histogram(self._pipeline_steps, (pipeline, step), LATENCY_BOUNDS).observe_unlocked(seconds)

    def cancelled(self, signature: str, stage: str) -> None:
        """A request whose client left before the gateway had written it to its model server
        (the servers count those they dropped from their queue or stopped running)."""
        key = (signature, stage)
        self._cancelled[key] = self._cancelled.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def requests_by_signature(self) -> dict[str, dict[str, int]]:
        """``{signature: {status code: count}}`` since the gateway started."""
        out: dict[str, dict[str, int]] = {}
        for (signature, status), count in list(self._counts.items()):
            out.setdefault(signature, {})[str(status)] = count
        return out


class _RunCollector:
    """``bis_requests_total`` and ``bis_request_duration_seconds`` from the gateway's counts."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("bis_requests", "Requests answered by the gateway's /run, by SIGNATURE "
                                       "and status", labels=["signature", "code"])
        for (signature, status), count in sorted(list(self.metrics._counts.items())):
            requests.add_metric([signature, str(status)], count)
        latency = HistogramMetricFamily("bis_request_duration_seconds", "Time the gateway took to answer /run",
                                        labels=["signature"])
        for signature, histogram in sorted(list(self.metrics._latency.items())):
            data = histogram.to_json()
            latency.add_metric([signature], cumulative_buckets(data), data["sum"])
        first = HistogramMetricFamily("bis_stream_first_item_seconds", "Time from a streamed request to its first "
                                      "item, at the gateway", labels=["signature"])
        items = HistogramMetricFamily("bis_stream_items", "Items per streamed answer", labels=["signature"])
        for family, table in ((first, self.metrics._first_item), (items, self.metrics._stream_items)):
            for signature, histogram in sorted(list(table.items())):
                data = histogram.to_json()
                family.add_metric([signature], cumulative_buckets(data), data["sum"])
        steps = HistogramMetricFamily("bis_pipeline_step_seconds", "Time of each step of a pipeline request, "
                                      "from sent to answered", labels=["pipeline", "step"])
        for (pipeline, step), histogram in sorted(list(self.metrics._pipeline_steps.items())):
            data = histogram.to_json()
            steps.add_metric([pipeline, step], cumulative_buckets(data), data["sum"])
        active = GaugeMetricFamily("bis_active_streams", "Streamed answers in progress", labels=["signature"])
        for signature, count in sorted(list(self.metrics.active_streams.items())):
            active.add_metric([signature], count)
        yield requests
        yield latency
        yield first
        yield items
        yield steps
        yield active


class _ChildrenCollector:
    """Collects, at scrape time, the children's state, workers, server-side histograms and the
    memory and CPU of every process."""

    def __init__(self, routes: RouteTable, cancelled: dict[tuple[str, str], int]):
        self.routes = routes
        self.cancelled = cancelled  # the gateway's own: requests dropped before a server saw them
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="metrics")

    def describe(self) -> list[Metric]:
        return []  # families depend on the children present; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        routes = self.routes.routes  # one snapshot for the whole scrape
        handles = list(routes.children)
        servers = [h for h in handles if not h.is_support]
        labels = ["signature", "replica"]
        state = GaugeMetricFamily("bis_server_state", "1 for the state each child is in", labels=[*labels, "state"])
        restarts = CounterMetricFamily("bis_server_restarts", "Times the gateway restarted the child", labels=labels)
        for handle in handles:
            for name in STATES:
                state.add_metric([*self._labels(handle), name], 1.0 if handle.state == name else 0.0)
            restarts.add_metric(self._labels(handle), handle.restarts)
        recycles = CounterMetricFamily("bis_server_recycles", "Servers replaced blue-green by MAX_REQUESTS or "
                                       "MAX_RSS_MB", labels=["signature", "reason"])
        for (name, reason), count in sorted(routes.recycles.items()):
            recycles.add_metric([name, reason], count)
        remote = list(routes.remote)
        address_labels = ["signature", "address"]
        remote_state = GaugeMetricFamily("bis_remote_server_state", "1 for the state each address of a remote "
                                         "endpoint (URLS) is in", labels=[*address_labels, "state"])
        remote_inflight = GaugeMetricFamily("bis_remote_requests_in_flight", "Requests forwarded to the address "
                                            "and not answered yet", labels=address_labels)
        remote_failed = CounterMetricFamily("bis_remote_requests_unreached", "Requests that could not reach the "
                                            "address (refused, connection lost, shutting down)", labels=address_labels)
        for handle in remote:
            values = self._labels(handle)
            for name in REMOTE_STATES:
                remote_state.add_metric([*values, name], 1.0 if handle.state == name else 0.0)
            remote_inflight.add_metric(values, handle.inflight.count)
            remote_failed.add_metric(values, handle.failed)
        yield state
        yield restarts
        yield recycles
        yield remote_state
        yield remote_inflight
        yield remote_failed
        yield from self._server_families([*servers, *remote], labels)
        yield from self._process_families(handles)

    @staticmethod
    def _labels(handle: ChildHandle | RemoteHandle) -> list[str]:
        if handle.is_remote:
            return [handle.endpoint.name, handle.address]
        return [handle.endpoint.name, str(handle.replica + 1)]  # 1, 2, ... as in the names echo, echo#2

    def _server_families(self, servers: list[ChildHandle | RemoteHandle], labels: list[str]) -> Iterator[Metric]:
        """What each READY model server's /stats says (a remote one's ``replica`` label is its address)."""
        ready = [h for h in servers if h.state == READY and h.http is not None]
        stats = list(self._pool.map(_fetch_stats, ready))
        gauges = {
            "queue": GaugeMetricFamily("bis_queue_depth", "Requests waiting for a free worker", labels=labels),
            "busy": GaugeMetricFamily("bis_workers_busy", "Workers running a request", labels=labels),
            "total": GaugeMetricFamily("bis_workers", "Workers configured (NR_WORKERS)", labels=labels),
            "ready": GaugeMetricFamily("bis_workers_ready", "Workers with their model loaded", labels=labels),
        }
        histograms = {
            "model_seconds": HistogramMetricFamily(
                "bis_model_duration_seconds", "Time in the worker's hooks, per request (a batch counts for each item)",
                labels=labels),
            "queue_seconds": HistogramMetricFamily(
                "bis_queue_wait_seconds", "Time a request waited in the server's queue", labels=labels),
            "batch_size": HistogramMetricFamily(
                "bis_batch_size", "Requests per call of _predict (endpoints with MAX_BATCH_SIZE > 1)", labels=labels),
        }
        cancelled = dict(self.cancelled)
        for handle, data in zip(ready, stats, strict=False):
            if data is None:
                continue
            for stage, count in data.get("cancelled", {}).items():
                key = (handle.endpoint.name, stage)
                cancelled[key] = cancelled.get(key, 0) + count
            values = self._labels(handle)
            for key, family in gauges.items():
                family.add_metric(values, data.get("workers", {}).get(key, 0))
            for key, family in histograms.items():
                if key in data and (key != "batch_size" or handle.endpoint.max_batch_size > 1):
                    family.add_metric(values, cumulative_buckets(data[key]), data[key]["sum"])
        cancels = CounterMetricFamily("bis_cancelled", "Requests dropped because their client left: still queued "
                                      "(no worker ran them) or running (their generator was closed)",
                                      labels=["signature", "stage"])
        for (signature, stage), count in sorted(cancelled.items()):
            cancels.add_metric([signature, stage], count)
        yield from gauges.values()
        yield from histograms.values()
        yield cancels

    def _process_families(self, handles: list[ChildHandle]) -> Iterator[Metric]:
        memory = GaugeMetricFamily("bis_process_resident_memory_bytes",
                                   "RSS of the gateway and of each child with its descendants", labels=["process"])
        cpu = CounterMetricFamily("bis_process_cpu_seconds",
                                  "CPU time (user + system) of the gateway and of each child with its descendants",
                                  labels=["process"])
        processes = [("gateway", os.getpid())] + [(h.name, h.pid) for h in handles if h.pid]
        for name, pid in processes:
            figures = process_tree_usage(pid)
            if figures is not None:
                memory.add_metric([name], figures[0])
                cpu.add_metric([name], figures[1])
        yield memory
        yield cpu


def _fetch_stats(handle: ChildHandle | RemoteHandle) -> dict[str, Any] | None:
    try:
        reply = handle.http.request("GET", "/stats", timeout=STATS_TIMEOUT)  # type: ignore[union-attr]
        return json.loads(reply.data) if reply.status == 200 else None
    except (OSError, ValueError) as exc:
        logger.debug("No /stats from %s: %s", handle.name, exc)
        return None


