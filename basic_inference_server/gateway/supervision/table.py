"""The table of a gateway's children (:class:`ChildTable`), and its one owner.

It holds the handles (name -> :class:`~.handle.ChildHandle`, a replica's name is ``name#2``...),
the configuration in force (the endpoints change with reloads), the lock that guards both, the one
function that changes a child's state (:meth:`ChildTable.transition`), the events it records in
the history, and the route snapshots it publishes whenever the children or the endpoints change.
The supervisor, the reloader, the probes and the stopper all work through its methods.

Log lines and history events are queued under the lock and written by :meth:`ChildTable.flush`
once it is released: request threads take this lock (``/ready``, admin routes) and must not wait
on a disk.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ...config import EndpointConfig, GatewayConfig
from ..routing.routes import RouteTable
from .handle import FAILED, READY, RESTARTING, ChildHandle, ChildState, replica_key
from .history import StateHistory

logger = logging.getLogger(__name__)

KILL_MARGIN = 2.0  # seconds past SHUTDOWN_GRACE before a child that ignored SIGTERM is killed


class ChildTable:
    def __init__(self, config: GatewayConfig, routes: RouteTable | None = None, history: StateHistory | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config  # the configuration in force: its endpoints change with reloads
        self.handles: dict[str, ChildHandle] = {}
        self.routes = routes or RouteTable()
        self.history = history
        self.clock = clock  # the supervision's time (tests give a fake one)
        self.recycles: dict[tuple[str, str], int] = {}  # (endpoint, reason) -> servers recycled
        self.lock = threading.RLock()  # re-entrant: held by the loop, the probes, the admin routes
        self._events: deque[tuple[str, ChildState | None, ChildState | None, str, str | None]] = deque()
        self.routes.publish_local(config.endpoints, [])

    # -- the one place that changes a child's state ---------------------------------------------
    def transition(self, handle: ChildHandle, state: ChildState, why: str = "", event: str | None = None) -> None:
        """Move ``handle`` to ``state`` (under the lock); its log line and history event are
        written by :meth:`flush`."""
        previous, handle.state = handle.state, state
        if state == READY:
            handle.ready_at, handle.error = self.clock(), None
        elif state in (FAILED, RESTARTING) and why:
            handle.error = why
        self._events.append((handle.name, previous, state, why, event))

    def fail(self, handle: ChildHandle, error: str) -> None:
        """FAILED, with a FAILED event when it is the routed one (not a new generation that did not load)."""
        routed = self.handles.get(handle.name) is handle
        self.transition(handle, FAILED, error, event="FAILED" if routed else None)

    def record(self, event: str, name: str, detail: str | None) -> None:
        """A history event that is not a change of state (under the lock, written by :meth:`flush`)."""
        self._events.append((name, None, None, detail or "", event))

    def flush(self) -> None:
        """Write the queued transitions and events to the log and the history (never under the lock)."""
        while self._events:
            name, previous, state, why, event = self._events.popleft()
            if state is not None:
                level = logging.ERROR if state in (FAILED, RESTARTING) else logging.INFO
                logger.log(level, "%s: %s -> %s%s", name, previous, state, f" ({why})" if why else "")
            if event is not None and self.history is not None:
                self.history.record(event, name, why or None)

    # -- children ---------------------------------------------------------------------------------
    def add(self, handle: ChildHandle) -> None:
        """A child to route to under its name (a new one, or a new generation switched in)."""
        self.handles[handle.name] = handle
        self.publish()

    def remove(self, names: list[str]) -> list[ChildHandle]:
        """The children of the endpoints ``names``, out of the table (and the routes) at once."""
        gone = [h for h in self.handles.values() if h.endpoint.name in names]
        for handle in gone:
            del self.handles[handle.name]
        self.publish()
        return gone

    def replicas_of(self, name: str) -> list[ChildHandle]:
        """The children serving endpoint ``name``, first replica first (empty if none started)."""
        endpoint = self.config.endpoint(name)
        count = 1 if endpoint is None or endpoint.is_support else endpoint.nr_replicas
        keys = (replica_key(name, replica) for replica in range(count))
        return [self.handles[key] for key in keys if key in self.handles]

    def servers(self) -> list[ChildHandle]:
        return [h for h in self.handles.values() if not h.is_support]

    def supports(self) -> list[ChildHandle]:
        return [h for h in self.handles.values() if h.is_support]

    def terminate(self, handle: ChildHandle, now: float) -> None:
        """SIGTERM the child now; SIGKILL once SHUTDOWN_GRACE (and a margin) has passed (the loop)."""
        if handle.proc is not None and handle.proc.poll() is None:
            handle.proc.terminate()
            handle.kill_at = now + self.config.shutdown_grace + KILL_MARGIN

    # -- the endpoints in force, and the routes ----------------------------------------------------
    def set_endpoints(self, endpoints: tuple[EndpointConfig, ...]) -> None:
        """The configured endpoints from now on (a reloaded configuration)."""
        self.config = dataclasses.replace(self.config, endpoints=endpoints)
        self.publish()

    def endpoint_changed(self, endpoint: EndpointConfig) -> None:
        """A new entry is in force for one configured endpoint (what its next start uses)."""
        self.set_endpoints(tuple(endpoint if e.name == endpoint.name else e for e in self.config.endpoints))

    def recycled(self, name: str, reason: str) -> None:
        """A server of ``name`` was replaced for ``reason`` (MAX_REQUESTS, MAX_RSS_MB)."""
        self.recycles[name, reason] = self.recycles.get((name, reason), 0) + 1
        self.publish()

    def publish(self) -> None:
        """The route table from the children, endpoints and recycles as they are now."""
        self.routes.publish_local(self.config.endpoints, list(self.handles.values()), self.recycles)
