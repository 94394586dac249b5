"""What ``/list_servers`` and ``/dashboard/data`` show of the children and the remote servers.

Views of snapshots: the handles as they are now, the reloads' last results and recycle counts, the
metrics' figures. Nothing here changes anything or reaches into the supervisor.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...pipeconfig import PipelineConfig
from ...server.placement import device_of
from ..remote.handle import RemoteHandle
from ..supervision.handle import READY, ChildHandle
from .status import memory_mb


@dataclass(frozen=True)
class Children:
    """The children and remote servers as they are now, and what their reloads did."""

    servers: list[ChildHandle]
    supports: list[ChildHandle]
    remotes: list[RemoteHandle]
    last_reloads: Mapping[str, dict[str, Any]]  # endpoint -> its last finished reload, as /reload_server answers
    recycles: Mapping[tuple[str, str], int]  # (endpoint, reason) -> recycles done
    pipelines: Mapping[str, PipelineConfig] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """``AVAIL_SERVERS`` (model servers here and elsewhere), ``SUPPORT_PROCESSES`` and
        ``PIPELINES``."""
        ready = self.ready_endpoints if self.pipelines else set()
        return {"AVAIL_SERVERS": {**{h.name: self.describe(h) for h in self.servers},
                                  **{h.name: describe_remote(h) for h in self.remotes}},
                "SUPPORT_PROCESSES": {h.name: self.describe(h) for h in self.supports},
                "PIPELINES": {name: self.describe_pipeline(p, ready) for name, p in self.pipelines.items()}}

    @property
    def ready_endpoints(self) -> set[str]:
        """The endpoints with a READY model server, here or elsewhere (URLS)."""
        return {h.endpoint.name for h in self.servers if h.state == READY} | {
            h.endpoint.name for h in self.remotes if h.routable}

    @staticmethod
    def describe_pipeline(pipeline: PipelineConfig, ready: set[str]) -> dict[str, Any]:
        """Its steps in order, each step's parents, and READY when every step has a READY server
        (``ready``: the endpoints that have one)."""
        waiting = [step for step in pipeline.order if step not in ready]
        state = "DISABLED" if pipeline.disabled else "WAITING" if waiting else READY
        return {"STATE": state, "ONLINE": state == READY, "STEPS": list(pipeline.order),
                "PARENTS": {step: list(parents) for step, parents in pipeline.parents.items()},
                "LAST": pipeline.last, "WAITING_FOR": waiting, "REQUEST_TIMEOUT": pipeline.request_timeout,
                "DESCRIPTION": pipeline.description}

    def describe(self, handle: ChildHandle) -> dict[str, Any]:
        endpoint = handle.endpoint
        running = handle.pid is not None
        uptime = time.monotonic() - handle.started_at if running else 0
        info = {
            "STATE": handle.state,
            "ONLINE": handle.state == READY,
            "PID": handle.pid,
            "UPTIME": str(datetime.timedelta(seconds=int(uptime))),
            "RESTARTS": handle.restarts,
            "LAST_EXIT_CODE": handle.exit_code,
            "ERROR": handle.error,
            "DESCRIPTION": endpoint.description,
        }
        if not handle.is_support:
            last = self.last_reloads.get(endpoint.name)
            recycles = {reason: count for (name, reason), count in self.recycles.items() if name == endpoint.name}
            info.update(GENERATION=handle.generation, LAST_RELOAD=last,
                        REQUESTS_SERVED=handle.served, RSS_MB=round(handle.rss_bytes / 1048576, 1) or None,
                        RECYCLES=recycles)
            info.update(HOST=endpoint.host, PORT=handle.port, SERVER_CLASS=endpoint.server_class,
                        WORKERS=handle.workers or {"total": endpoint.nr_workers, "ready": 0},
                        HEALTH_FAILURES=handle.health_failures,
                        DEVICE=device_of(endpoint.devices, handle.replica) or None, OPENAI=endpoint.openai)
        return info

    def memory(self) -> dict[str, float | None]:
        return memory_mb([*self.servers, *self.supports])

    def active_streams(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Streamed answers in progress by endpoint, 0 for a started endpoint without one."""
        streams = dict.fromkeys(sorted({h.endpoint.name for h in self.servers}), 0)
        streams.update(counts)
        return streams


def describe_remote(handle: RemoteHandle) -> dict[str, Any]:
    """An address of a remote endpoint (URLS): a model server this gateway did not start."""
    endpoint = handle.endpoint
    return {
        "STATE": handle.state, "ONLINE": handle.routable, "PID": None,
        "UPTIME": str(datetime.timedelta(seconds=int(time.monotonic() - handle.since))),  # in this state
        "RESTARTS": 0, "LAST_EXIT_CODE": None, "ERROR": handle.error, "DESCRIPTION": endpoint.description,
        "REMOTE": True, "URL": handle.source, "HOST": handle.host, "PORT": handle.port,
        "SERVER_CLASS": endpoint.server_class,
        "WORKERS": handle.workers or {"total": endpoint.nr_workers, "ready": 0},
        "HEALTH_FAILURES": handle.health_failures, "GENERATION": handle.generation,
        "REQUESTS_SERVED": handle.served, "REQUESTS_UNREACHED": handle.failed,
        "IN_FLIGHT": handle.inflight.count,
    }


def events(history: Mapping[str, Any], last: int) -> list[dict[str, Any]]:
    """The history's newest ``last`` events, oldest first."""
    recorded: Iterable[dict[str, Any]] = history.get("EVENTS", [])
    return list(recorded)[-last:]
