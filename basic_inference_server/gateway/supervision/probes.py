"""Health probes of the model servers (:class:`Prober`): ``GET /health`` on a small thread pool,
so that a hung server never stalls the supervisor's loop.

A STARTING server is probed every 50 ms until it answers 200 (READY); a READY one every second,
and its health failures counted for the supervisor's loop, which recycles it after
``HEALTH_FAILURES`` in a row. A server busy with a large body holds the interpreter's lock, so its
``/health`` may not answer in time, yet it goes on answering requests: that is not counted
(:func:`judge`). Each probe also measures the server's memory (``MAX_RSS_MB``).
"""

from __future__ import annotations

import json
import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any

from ..observe.sysinfo import process_tree_usage
from .handle import READY, STARTING, ChildHandle
from .table import ChildTable

logger = logging.getLogger(__name__)

STARTING_PROBE_INTERVAL = 0.05
HEALTH_INTERVAL = 1.0
HEALTH_TIMEOUT = 2.0
HEALTH_FAILURES = 3  # consecutive failed probes before a READY server is recycled


class Probe(Enum):
    """What one health probe of a model server says."""

    HEALTHY = "healthy"  # /health answered 200
    BUSY = "busy"  # no answer in time, but answers or items came from it since the last probe
    FAILED = "failed"  # no answer and nothing else from it either (hung), or not 200 (stuck, draining)


def judge(status: int | None, progressed: bool) -> Probe:
    """A probe's verdict: a server busy with a large body holds the interpreter's lock, so its
    /health may not answer in time, yet it goes on answering requests; a hung one answers nothing.
    A server that answers /health with an error (its workers stuck) has said so itself."""
    if status == 200:
        return Probe.HEALTHY
    return Probe.BUSY if status is None and progressed else Probe.FAILED


def health(handle: ChildHandle, timeout: float = 1.0) -> tuple[int | None, dict[str, Any]]:
    """``(status, body)`` of the server's ``/health``; ``(None, {})`` when unreachable."""
    if handle.http is None:
        return None, {}
    try:
        response = handle.http.request("GET", "/health", timeout=timeout)
        return response.status, json.loads(response.data or b"{}")
    except (OSError, ValueError):
        return None, {}


class Prober:
    """Probes the table's model servers when due (the supervisor's loop calls :meth:`start_due`)."""

    def __init__(self, table: ChildTable, threads: int = 4):
        self.table = table
        self.health = health  # how a server is asked (tests give an answer of their choosing)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="health-probe")

    @staticmethod
    def due(handle: ChildHandle, now: float) -> bool:
        return (not handle.is_support and handle.state in (STARTING, READY) and handle.proc is not None
                and not handle.probing and now >= handle.probe_due)

    def start_due(self, handles: list[ChildHandle], now: float) -> None:
        """Start a probe of each handle that is due one (under the table's lock)."""
        for handle in handles:
            if self.due(handle, now):
                handle.probing = True
                self._pool.submit(self.probe, handle, handle.proc)

    def probe(self, handle: ChildHandle, proc: subprocess.Popen | None) -> None:
        """Probe one server and record the verdict (a probe thread)."""
        table = self.table
        starting = handle.state == STARTING
        status, body = self.health(handle, timeout=0.5 if starting else HEALTH_TIMEOUT)
        usage = process_tree_usage(proc.pid) if proc is not None and not starting else None
        rss = usage[0] if usage is not None else 0
        failed = None
        with table.lock:
            handle.probing = False
            if handle.proc is not proc:
                return  # the child was replaced meanwhile
            now = table.clock()
            verdict = judge(status, handle.progress != handle.progress_seen)
            handle.progress_seen = handle.progress
            if verdict is Probe.HEALTHY:
                handle.workers = body.get("workers", {})
                handle.health_failures = 0
                handle.rss_bytes = rss
                if handle.state == STARTING:
                    table.transition(handle, READY, f"{now - handle.started_at:.2f}s after start")
            elif verdict is Probe.BUSY:
                logger.info("%s: /health not answered within %gs, but the server answers requests: busy, "
                            "not hung", handle.name, HEALTH_TIMEOUT)
            elif handle.state == READY:
                handle.health_failures += 1
                handle.error = failed = body.get("ERROR") or f"/health answered {status or 'nothing'}"
            handle.probe_due = now + (STARTING_PROBE_INTERVAL if handle.state == STARTING else HEALTH_INTERVAL)
        if failed is not None:
            logger.warning("%s health check failed (%d in a row): %s", handle.name, handle.health_failures, failed)
        table.flush()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
