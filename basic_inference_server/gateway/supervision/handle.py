"""One child process of the gateway (a model server or a support process) and its state.

States (:class:`ChildState`): STARTING -> READY; READY -> RESTARTING (crash, hang) -> STARTING;
STARTING -> FAILED (load error, startup timeout); any -> STOPPING -> STOPPED (admin, shutdown).
Only :meth:`ChildTable.transition <basic_inference_server.gateway.supervision.table.ChildTable.transition>` moves
a handle from one state to another.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import EndpointConfig
from ...httpserve import InFlight
from ...states import ChildState
from ..routing.upstream import Upstream

STARTING, READY, RESTARTING = ChildState.STARTING, ChildState.READY, ChildState.RESTARTING
STOPPING, STOPPED, FAILED = ChildState.STOPPING, ChildState.STOPPED, ChildState.FAILED


def replica_key(name: str, replica: int) -> str:
    """Table key of a replica: the endpoint's name for the first, ``name#2``, ``name#3``... after."""
    return name if replica == 0 else f"{name}#{replica + 1}"


@dataclass
class ChildHandle:
    """One child process and what the gateway knows of it."""

    is_remote: ClassVar[bool] = False

    endpoint: EndpointConfig
    port: int | None  # None for support processes
    replica: int = 0  # NR_REPLICAS: each replica is its own child, on its own port
    state: ChildState = STOPPED  # changed only by ChildTable.transition
    proc: subprocess.Popen | None = None
    started_at: float = 0.0  # time.monotonic() of the last spawn
    ready_at: float | None = None
    error: str | None = None
    exit_code: int | None = None
    restarts: int = 0
    failures: int = 0  # consecutive failed runs, for the backoff
    restart_at: float = 0.0
    kill_at: float | None = None
    bind_retries: int = 0
    probe_due: float = 0.0
    probing: bool = False
    health_failures: int = 0
    workers: dict[str, Any] = field(default_factory=dict)
    nr_workers: int | None = None  # set by /update_workers: kept across restarts
    inflight: InFlight = field(default_factory=InFlight)  # requests being forwarded to it
    http: Upstream | None = field(default=None, repr=False)  # its HTTP port: health, admin routes
    socket_path: str = ""  # its internal channel: /run
    generation: int = 1  # each blue-green replacement (reload, recycle) starts the next one
    port_key: str = ""  # the name its port is allocated under ("" = its name)
    code_hash: str = ""  # of the endpoint file it was started from (a reloaded configuration compares it)
    served: int = 0  # answers the gateway relayed from it (counted by the event loop alone)
    progress: int = 0  # answers and stream items that came from it (counted by the event loop alone)
    progress_seen: int = 0  # `progress` at its last health probe (the probes' thread alone)
    recycle_after: int = 0  # MAX_REQUESTS plus its jitter, drawn at each start (0: never)
    rss_bytes: int = 0  # its process tree, measured with the health probes
    recycle_paused_until: float = 0.0  # after a recycle that failed: not tried again before then

    @property
    def name(self) -> str:
        return replica_key(self.endpoint.name, self.replica)

    @property
    def key(self) -> str:
        """What the gateway's clients are kept by: its internal channel."""
        return self.socket_path

    @property
    def routable(self) -> bool:
        """READY and passing its health probes: requests may go to it."""
        return self.state is READY and not self.health_failures

    @property
    def is_support(self) -> bool:
        return self.endpoint.is_support

    @property
    def capacity(self) -> int:
        return self.endpoint.capacity(self.nr_workers)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None
