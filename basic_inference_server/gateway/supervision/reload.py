"""Blue-green replacement of an endpoint's model servers: a new generation, then the switch.

For each replica in turn: a new process (the next *generation*) starts on a port of its own
with the endpoint file as it is now on disk and the given configuration entry, while the old one
keeps serving. Once the new one is READY, routing switches to it in one assignment of the route
table; the old one gets no new request, finishes those it was sent (the gateway waits until it
holds none, then SIGTERM lets the server drain its own queue), and stops. A new generation that
exits, fails to load or misses ``STARTUP_TIMEOUT`` is stopped, and the old one goes on serving:
the reload is FAILED with the reason. With no free port for a second process, the replica is
replaced in place instead (stopped, then started again): its requests get 503 with
``Retry-After`` meanwhile, and the answer says so.

:class:`Reload` is the record of one request; its state is a :class:`ReloadState` changed only
by :meth:`Reload.move`. The supervisor's main loop drives it (:meth:`Reloader.step`), since
only the main thread spawns processes; the children it starts and retires are in the supervisor's
table (:class:`~.table.ChildTable`), whose methods it changes them with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...config import EndpointConfig
from ...states import ReloadState
from ..observe.sysinfo import memory, process_tree_usage
from .handle import FAILED, READY, RESTARTING, STARTING, STOPPED, STOPPING, ChildHandle, replica_key
from .ports import PortAllocator, PortsExhausted
from .table import ChildTable

logger = logging.getLogger(__name__)

RETIRE_MARGIN = 5.0  # seconds past REQUEST_TIMEOUT an old generation may keep requests before SIGTERM
MEMORY_HEADROOM = 1.25  # a new generation is expected to need this much of the old one's RSS
RECYCLE_PAUSE = 60.0  # after a recycle that failed, seconds before the server is tried again
RELOAD, MAX_REQUESTS, MAX_RSS = "reload", "max_requests", "max_rss"  # why a generation is replaced


@dataclass
class Reload:
    """One reload of one endpoint: its replicas replaced one at a time."""

    name: str
    endpoint: EndpointConfig  # the configuration entry the new generation starts with
    replicas: int  # replaced: replica .. replicas - 1
    reason: str = RELOAD
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # the supervision's time
    started: float = -1.0  # (the clock's now, by default)
    state: ReloadState = ReloadState.STARTING
    replica: int = 0  # the one being replaced
    new: ChildHandle | None = None
    in_place: str | None = None  # why a replica was replaced in place (no room for a second process)
    error: str | None = None
    pids: list[int] = field(default_factory=list)
    generation: int = 0
    seconds: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    def move(self, state: ReloadState, error: str | None = None) -> None:
        """The one place that changes a reload's state."""
        self.state, self.error = state, error
        if state in (ReloadState.DONE, ReloadState.FAILED):
            self.seconds = round(self.clock() - self.started, 3)
            self.done.set()

    def to_json(self) -> dict[str, Any]:
        error = self.error or ("still in progress" if self.state is ReloadState.STARTING else None)
        return {"SIGNATURE": self.name, "REASON": self.reason, "STATE": self.state.name, "GENERATION": self.generation,
                "PIDS": list(self.pids), "SECONDS": self.seconds, "ERROR": error, "IN_PLACE": self.in_place}


class Reloader:
    """The reloads in progress and the old generations still draining, for one supervisor."""

    def __init__(self, table: ChildTable, ports: PortAllocator):
        self.table = table
        self.ports = ports
        self.active: dict[str, Reload] = {}
        self.retiring: list[tuple[ChildHandle, float]] = []  # (old generation, switched at)
        self.last: dict[str, Reload] = {}  # endpoint name -> its last finished reload
        self.waiting: dict[str, Reload] = {}  # reloads asked for while a recycle of the endpoint runs

    def handles(self) -> list[ChildHandle]:
        """Children that are not in the route table: new generations loading, old ones draining.
        (A replica replaced in place is in the table already: listed twice, it would be stepped,
        and spawned, twice.)"""
        return ([r.new for r in self.active.values() if r.new is not None and not r.in_place]
                + [h for h, _ in self.retiring])

    def request(self, name: str, endpoint: EndpointConfig) -> Reload:
        """Queue a reload of ``name`` (any thread; the caller holds the supervisor's lock)."""
        current = self.active.get(name)
        if current is not None and current.reason == RELOAD:
            return current  # one at a time: a second call joins the one in progress
        reload = Reload(name, endpoint, endpoint.nr_replicas, clock=self.table.clock)
        if current is not None:  # a recycle is replacing one replica: the reload comes after it
            return self.waiting.setdefault(name, reload)
        self.active[name] = reload
        logger.info("%s: reload requested", name)
        return reload

    def refused(self, name: str, error: str) -> Reload:
        """Record a reload that failed before any process started (under the lock)."""
        reload = Reload(name, self.table.config.endpoint(name), 0, clock=self.table.clock)  # type: ignore[arg-type]
        reload.move(ReloadState.FAILED, error)
        self.last[name] = reload
        self.table.record("RELOAD_FAILED", name, error)
        return reload

    def drop(self, name: str) -> None:
        """``name`` is gone from the configuration: what was under way for it stops (under the lock)."""
        self.waiting.pop(name, None)
        reload = self.active.pop(name, None)
        if reload is None:
            return
        if reload.new is not None and not reload.in_place:
            self.table.terminate(reload.new, self.table.clock())
            self.retiring.append((reload.new, 0.0))
        reload.new = None
        reload.move(ReloadState.FAILED, "the endpoint was removed from the configuration")

    def step(self, now: float) -> None:
        """Advance every reload and retirement (main loop, under the lock). A new generation is
        left STARTING without a process: the supervisor's step spawns it like any child."""
        for name, reload in list(self.active.items()):
            self._advance(reload, now)
            if reload.done.is_set():
                del self.active[name]
                self._finished(reload, now)
                if name in self.waiting:
                    self.active[name] = self.waiting.pop(name)
        self._check_recycles(now)
        self._retire(now)

    def _finished(self, reload: Reload, now: float) -> None:
        if reload.reason == RELOAD:
            self.last[reload.name] = reload
            return
        key = replica_key(reload.name, reload.replica - (reload.state == ReloadState.DONE))
        if reload.state == ReloadState.DONE:
            self.table.recycled(reload.name, reload.reason)
            self.table.record("RECYCLE", key, f"{reload.reason}, generation {reload.generation}")
        else:
            handle = self.table.handles.get(key)
            if handle is not None:
                handle.recycle_paused_until = now + RECYCLE_PAUSE

    def _check_recycles(self, now: float) -> None:
        """MAX_REQUESTS and MAX_RSS_MB: a READY server past either is replaced blue-green."""
        for handle in list(self.table.handles.values()):
            endpoint = handle.endpoint
            if (handle.is_support or handle.state != READY or endpoint.name in self.active
                    or now < handle.recycle_paused_until):
                continue
            reason = None
            if handle.recycle_after and handle.served >= handle.recycle_after:
                reason = MAX_REQUESTS
            elif endpoint.max_rss_mb and handle.rss_bytes > endpoint.max_rss_mb * 1024 * 1024:
                reason = MAX_RSS
            if reason is not None:
                logger.info("%s: recycling (%s: %d requests served, %.0f MB)", handle.name, reason, handle.served,
                            handle.rss_bytes / 1e6)
                self.active[endpoint.name] = Reload(endpoint.name, endpoint, handle.replica + 1, reason,
                                                    self.table.clock, replica=handle.replica)

    # -- one reload --------------------------------------------------------------------------
    def _advance(self, reload: Reload, now: float) -> None:
        table = self.table
        new = reload.new
        if new is None:
            self._begin_replica(reload)
            return
        if new.state == READY:
            self._switch(reload, new, now)
            if not reload.done.is_set():
                self._advance(reload, now)
            return
        if reload.in_place and new.state == RESTARTING and new.started_at < reload.started:
            return  # still draining before its start with the new code
        if reload.in_place and new.state in (FAILED, RESTARTING):
            reload.new = None
            reload.move(ReloadState.FAILED, f"{new.name}, replaced in place, did not start: {new.error}")
            table.record("RELOAD_FAILED", reload.name, reload.error)
            return
        if new.state in (FAILED, RESTARTING, STOPPED):
            why = new.error or f"exited with code {new.exit_code}"
            table.terminate(new, now)
            self.retiring.append((new, now - 1e9))  # nothing was routed to it: stop it at once
            reload.new = None
            reload.move(ReloadState.FAILED, f"the new generation of {new.name} did not start: {why}")
            table.record("RELOAD_FAILED" if reload.reason == RELOAD else "RECYCLE_FAILED", reload.name, reload.error)
            logger.error("%s: reload failed, the old generation goes on serving: %s", reload.name, why)

    def _begin_replica(self, reload: Reload) -> None:
        table = self.table
        key = replica_key(reload.name, reload.replica)
        if any(h.name == key and h.proc is not None and h.proc.poll() is None for h, _ in self.retiring):
            return  # the generation before is still draining: wait for it (and its port) to go
        key_handle = table.handles.get(key)
        generation = (key_handle.generation if key_handle is not None else 0) + 1
        no_room = _memory_short(key_handle)
        if no_room is not None and key_handle is not None:
            self._in_place(reload, key_handle, generation, no_room)
            return
        new = ChildHandle(endpoint=reload.endpoint, port=None, replica=reload.replica, generation=generation)
        new.port_key = f"{new.name}@{generation}"
        try:
            new.port = self.ports.allocate(new.port_key, reload.endpoint.host)
        except PortsExhausted as exc:
            if key_handle is None:
                reload.move(ReloadState.FAILED, str(exc))
                return
            self._in_place(reload, key_handle, generation, str(exc))
            return
        new.nr_workers = key_handle.nr_workers if key_handle is not None else None
        reload.new, reload.generation = new, generation
        table.transition(new, STARTING, f"generation {generation}")

    def _in_place(self, reload: Reload, old: ChildHandle, generation: int, why: str) -> None:
        """No room for a second process: the replica stops (draining) and starts again with the
        new code and entry on its port; the router answers 503 with Retry-After meanwhile."""
        reload.in_place = f"replaced in place (503 with Retry-After meanwhile): {why}"
        logger.warning("%s: %s", old.name, reload.in_place)
        now = self.table.clock()
        old.endpoint, old.generation, old.restart_at = reload.endpoint, generation, now
        self.table.terminate(old, now)
        self.table.transition(old, RESTARTING, reload.in_place)
        reload.new, reload.generation = old, generation

    def _switch(self, reload: Reload, new: ChildHandle, now: float) -> None:
        table = self.table
        key = new.name
        old = table.handles.get(key)
        table.handles[key] = new
        table.endpoint_changed(reload.endpoint)  # (and the routes go to the new one)
        if old is not None and old is not new and old.proc is not None:
            new.restarts = old.restarts
            self.retiring.append((old, now))
        reload.pids.append(new.pid or 0)
        if reload.reason == RELOAD:  # a recycle is recorded when it is done (RECYCLE)
            table.record("RELOAD", new.name, f"generation {new.generation}, pid {new.pid}")
        logger.info("%s: switched to generation %d (pid %s)", key, new.generation, new.pid)
        reload.new = None
        reload.replica += 1
        if reload.replica >= reload.replicas:
            reload.move(ReloadState.DONE)

    # -- old generations ---------------------------------------------------------------------
    def _retire(self, now: float) -> None:
        table = self.table
        still = []
        for handle, since in self.retiring:
            proc = handle.proc
            if proc is None or proc.poll() is not None:
                self._release(handle)
                continue
            if handle.state != STOPPING:
                late = now - since > handle.endpoint.request_timeout + RETIRE_MARGIN
                if handle.inflight.count == 0 or late:  # what it was sent has been answered
                    table.transition(handle, STOPPING, f"generation {handle.generation} retired")
                    table.terminate(handle, now)
            elif handle.kill_at is not None and now >= handle.kill_at:
                proc.kill()
            still.append((handle, since))
        self.retiring = still

    def _release(self, handle: ChildHandle) -> None:
        """An old generation (or a new one that failed) has exited: free what it held."""
        if handle.proc is not None and handle.proc.stdin is not None:
            handle.proc.stdin.close()
        if handle.http is not None:
            handle.http.close()
            handle.http = None
        if handle.port_key or handle.generation == 1:
            self.ports.release(handle.port_key or handle.name)
        code = handle.proc.returncode if handle.proc is not None else None
        handle.exit_code = code
        self.table.transition(handle, STOPPED, f"generation {handle.generation} stopped, exit code {code}")


def _memory_short(old: ChildHandle | None) -> str | None:
    """Why a second process of ``old``'s size would not fit in the memory available (the
    container's limit when there is one), or None when it fits."""
    usage = process_tree_usage(old.pid) if old is not None else None
    if usage is None:
        return None
    needed, available = usage[0] * MEMORY_HEADROOM, memory().available
    if needed <= available:
        return None
    return (f"not enough memory for a second process: about {needed / 1048576:.0f} MB needed, "
            f"{available / 1048576:.0f} MB available")
