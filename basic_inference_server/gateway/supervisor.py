"""The table of child processes (model servers and support processes) and the loop that keeps it true.

One entry per started endpoint (name -> :class:`ChildHandle`). The gateway's main thread calls
:meth:`Supervisor.poll` every 0.1 s; it spawns what must start, reaps what exited, restarts
crashed children with exponential backoff (1 s doubling to 30 s, reset once a child has been
READY for a minute), recycles servers whose ``/health`` keeps failing (hung, or workers stuck),
and marks FAILED, without restarting, a server that exits because its model cannot load.
Health probes run on a small thread pool so a hung server never stalls the loop.

States: STARTING -> READY; READY -> RESTARTING (crash, hang) -> STARTING; STARTING -> FAILED
(load error, startup timeout); any -> STOPPING -> STOPPED (admin). Only the main thread spawns
(a support process's death signal is tied to the thread that forked it).
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..config import EndpointConfig, GatewayConfig
from ..errors import Conflict
from ..httpserve import InFlight
from .children import model_server_spec, spawn_model_server, spawn_support
from .history import StateHistory
from .ports import PortAllocator
from .reaper import reap_orphans
from .upstream import Upstream

logger = logging.getLogger(__name__)

STARTING, READY, RESTARTING = "STARTING", "READY", "RESTARTING"
STOPPING, STOPPED, FAILED = "STOPPING", "STOPPED", "FAILED"
NO_RESTART_CODES = (exitcodes.LOAD_FAILED, exitcodes.CONFIG_ERROR)
BIND_RETRIES = 3
STARTING_PROBE_INTERVAL = 0.05
HEALTH_INTERVAL = 1.0
HEALTH_TIMEOUT = 2.0
HEALTH_FAILURES = 3  # consecutive failed probes before a READY server is recycled
STABLE_AFTER = 60.0  # seconds READY after which the backoff starts again from 1 s
BACKOFF_MAX = 30.0
SUPPORT_SETTLE = 1.0  # a support process alive this long counts as READY


def connect_host(host: str) -> str:
    """Where the gateway connects for a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "localhost", "": "127.0.0.1"}.get(host, host)


def replica_key(name: str, replica: int) -> str:
    """Table key of a replica: the endpoint's name for the first, ``name#2``, ``name#3``... after."""
    return name if replica == 0 else f"{name}#{replica + 1}"


def backoff(failures: int) -> float:
    return min(BACKOFF_MAX, 2.0 ** max(0, failures - 1))


@dataclass
class ChildHandle:
    """One child process and what the gateway knows of it."""

    endpoint: EndpointConfig
    port: int | None  # None for support processes
    replica: int = 0  # NR_REPLICAS: each replica is its own child, on its own port
    state: str = STOPPED
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
    http: Upstream | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return replica_key(self.endpoint.name, self.replica)

    @property
    def is_support(self) -> bool:
        return self.endpoint.is_support

    @property
    def capacity(self) -> int:
        """Requests the server can hold: one per worker plus its queue."""
        return (self.nr_workers or self.endpoint.nr_workers) + self.endpoint.max_queue

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


class Supervisor:
    """Starts, watches, restarts and stops the children of one gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        app_root: Path,
        cache_folder: Path,
        host_id: str,
        admin_token: str | None,
        workers_location: str = "endpoints",
        workers_suffix: str = "Worker",
        execution_path: str = "/run",
        ports: PortAllocator | None = None,
        pool_size: int = 32,
        history: StateHistory | None = None,
    ):
        self.config = config
        self.app_root = app_root
        self.cache_folder = cache_folder
        self.run_folder = cache_folder / "_run"
        self.host_id = host_id
        self.admin_token = admin_token
        self.workers_location = workers_location
        self.workers_suffix = workers_suffix
        self.execution_path = execution_path
        self.ports = ports or PortAllocator(config.first_server_port, config.last_server_port)
        self.pool_size = pool_size
        self.history = history
        self.gateway_host = "127.0.0.1"  # set by the gateway once it listens (support processes post there)
        self.gateway_port = 0
        self.handles: dict[str, ChildHandle] = {}
        self._lock = threading.RLock()
        self._probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health-probe")

    # -- starting ----------------------------------------------------------------------------
    def start_enabled(self) -> None:
        """Spawn every enabled child, in configuration order, without waiting (main thread)."""
        for endpoint in self.config.endpoints:
            if not endpoint.disabled:
                with self._lock:
                    for replica in range(1 if endpoint.is_support else endpoint.nr_replicas):
                        self._spawn(self._handle(endpoint, replica))

    def request_start(self, name: str) -> ChildHandle:
        """Ask for ``name`` to start (any thread); the main loop spawns it.

        Raises KeyError for a name not in the configuration, Conflict when it is running (or
        still stopping), PortsExhausted when no port is left."""
        endpoint = self.config.endpoint(name)
        if endpoint is None:
            raise KeyError(name)
        with self._lock:
            for current in self.replicas_of(name):
                if current.state not in (STOPPED, FAILED) or current.pid is not None:
                    raise Conflict(f"Signature {current.name!r} already started ({current.state})")
            started = []
            for replica in range(1 if endpoint.is_support else endpoint.nr_replicas):
                handle = self._handle(endpoint, replica)
                handle.state, handle.proc, handle.failures, handle.error = STARTING, None, 0, None
                started.append(handle)
            return started[0]

    def _handle(self, endpoint: EndpointConfig, replica: int = 0) -> ChildHandle:
        key = replica_key(endpoint.name, replica)
        handle = self.handles.get(key)
        if handle is None:
            port = None if endpoint.is_support else self.ports.allocate(key, endpoint.host)
            handle = self.handles[key] = ChildHandle(endpoint=endpoint, port=port, replica=replica)
        return handle

    def replicas_of(self, name: str) -> list[ChildHandle]:
        """The children serving endpoint ``name``, first replica first (empty if none started)."""
        endpoint = self.config.endpoint(name)
        count = 1 if endpoint is None or endpoint.is_support else endpoint.nr_replicas
        keys = (replica_key(name, replica) for replica in range(count))
        return [self.handles[key] for key in keys if key in self.handles]

    def _spawn(self, handle: ChildHandle) -> None:
        if handle.proc is not None and handle.proc.stdin is not None:
            handle.proc.stdin.close()  # the previous run's pipe
        endpoint = handle.endpoint
        if handle.is_support:
            assert endpoint.script is not None
            handle.proc = spawn_support(endpoint.script, endpoint, connect_host(self.gateway_host),
                                        self.gateway_port, self.app_root)
        else:
            assert handle.port is not None
            error_file = self._error_file(handle)
            error_file.unlink(missing_ok=True)
            spec = model_server_spec(
                endpoint, handle.port, self.config, nr_workers=handle.nr_workers or endpoint.nr_workers,
                app_root=self.app_root, cache_folder=self.cache_folder,
                error_file=error_file, host_id=self.host_id, admin_token=self.admin_token,
                workers_location=self.workers_location, workers_suffix=self.workers_suffix,
                execution_path=self.execution_path,
            )
            spec["name"] = handle.name  # replicas log to files of their own
            handle.proc = spawn_model_server(spec, self.app_root)
            if handle.http is None or handle.http.port != handle.port or handle.http.closed:
                handle.http = Upstream(connect_host(endpoint.host), handle.port, maxsize=self.pool_size)
        now = time.monotonic()
        handle.state, handle.started_at, handle.ready_at = STARTING, now, None
        handle.kill_at, handle.health_failures, handle.probe_due = None, 0, now
        logger.info("Starting %s (pid %d%s)", handle.name, handle.proc.pid,
                    "" if handle.is_support else f", port {handle.port}, {endpoint.nr_workers} workers")

    def _error_file(self, handle: ChildHandle) -> Path:
        self.run_folder.mkdir(parents=True, exist_ok=True)
        return self.run_folder / f"{handle.name}.error"

    # -- the loop ----------------------------------------------------------------------------
    def poll(self) -> None:
        """One supervision step; called by the gateway's main thread about ten times a second."""
        now = time.monotonic()
        with self._lock:
            for handle in list(self.handles.values()):
                self._step(handle, now)
                if self._probe_due(handle, now):
                    handle.probing = True
                    self._probes.submit(self._probe, handle, handle.proc)
            reap_orphans({h.proc.pid for h in self.handles.values() if h.proc and h.proc.returncode is None})

    def _step(self, handle: ChildHandle, now: float) -> None:
        proc, state = handle.proc, handle.state
        if state == STARTING and proc is None:
            self._spawn(handle)
            return
        code = proc.poll() if proc is not None else None
        if state in (STARTING, READY):
            if code is not None:
                self._on_exit(handle, code, now)
            elif handle.is_support:
                if state == STARTING and now - handle.started_at >= SUPPORT_SETTLE:
                    self._mark_ready(handle, now)
            elif state == STARTING and now - handle.started_at > self.config.startup_timeout:
                self._fail(handle, f"not ready after STARTUP_TIMEOUT={self.config.startup_timeout:g}s")
                self._terminate(handle, now)
            elif state == READY and handle.health_failures >= HEALTH_FAILURES:
                self._recycle(handle, now)
            if handle.state == READY and handle.failures and now - (handle.ready_at or now) > STABLE_AFTER:
                handle.failures = 0
        elif code is None and proc is not None and handle.kill_at is not None and now >= handle.kill_at:
            logger.warning("%s (pid %d) ignored SIGTERM: killing it", handle.name, proc.pid)
            proc.kill()
        elif state == RESTARTING and code is not None and now >= handle.restart_at:
            self._spawn(handle)

    def _mark_ready(self, handle: ChildHandle, now: float) -> None:
        handle.state, handle.ready_at, handle.error = READY, now, None
        logger.info("%s is READY (%.2fs after start)", handle.name, now - handle.started_at)

    def _on_exit(self, handle: ChildHandle, code: int, now: float) -> None:
        handle.exit_code = code
        detail = ""
        if not handle.is_support:
            error_file = self._error_file(handle)
            detail = error_file.read_text(encoding="utf-8").strip() if error_file.exists() else ""
            if code == exitcodes.BIND_FAILED and handle.bind_retries < BIND_RETRIES:
                handle.bind_retries += 1
                try:
                    handle.port = self.ports.allocate(handle.name, handle.endpoint.host, avoid=handle.port)
                except Exception as exc:  # noqa: BLE001 - reported as the server's error
                    detail = f"{detail}; {exc}"
                else:
                    logger.warning("%s: port taken, retrying on port %d", handle.name, handle.port)
                    self._spawn(handle)
                    return
            if code in NO_RESTART_CODES:
                reason = exitcodes.DESCRIPTIONS[code]
                self._fail(handle, f"{reason} (exit code {code})" + (f": {detail}" if detail else ""))
                return
        handle.error = f"exited with code {code}" + (f": {detail}" if detail else "")
        self._schedule_restart(handle, now)

    def _fail(self, handle: ChildHandle, error: str) -> None:
        handle.state, handle.error = FAILED, error
        logger.error("%s FAILED: %s (not restarted)", handle.name, error)
        if self.history is not None:
            self.history.record("FAILED", handle.name, error)

    def _schedule_restart(self, handle: ChildHandle, now: float) -> None:
        handle.failures += 1
        handle.restarts += 1
        delay = backoff(handle.failures)
        handle.state, handle.restart_at = RESTARTING, now + delay
        logger.error("%s %s; restarting in %.0fs (restart #%d)", handle.name, handle.error, delay, handle.restarts)
        if self.history is not None:
            self.history.record("RESTART", handle.name, handle.error)

    def _recycle(self, handle: ChildHandle, now: float) -> None:
        handle.error = f"unhealthy: {handle.error or 'no answer to /health'}"
        self._terminate(handle, now)
        self._schedule_restart(handle, now)

    def _terminate(self, handle: ChildHandle, now: float) -> None:
        if handle.proc is not None and handle.proc.poll() is None:
            handle.proc.terminate()
            handle.kill_at = now + self.config.shutdown_grace + 2.0

    # -- health probes (on the probe threads) ------------------------------------------------
    @staticmethod
    def _probe_due(handle: ChildHandle, now: float) -> bool:
        return (not handle.is_support and handle.state in (STARTING, READY) and handle.proc is not None
                and not handle.probing and now >= handle.probe_due)

    def _probe(self, handle: ChildHandle, proc: subprocess.Popen | None) -> None:
        starting = handle.state == STARTING
        status, body = self.health(handle, timeout=0.5 if starting else HEALTH_TIMEOUT)
        with self._lock:
            handle.probing = False
            if handle.proc is not proc:
                return  # the child was replaced meanwhile
            now = time.monotonic()
            if status == 200:
                handle.workers = body.get("workers", {})
                handle.health_failures = 0
                if handle.state == STARTING:
                    self._mark_ready(handle, now)
            elif handle.state == READY:
                handle.health_failures += 1
                handle.error = body.get("ERROR") or f"/health answered {status or 'nothing'}"
                logger.warning("%s health check failed (%d in a row): %s", handle.name,
                               handle.health_failures, handle.error)
            handle.probe_due = now + (STARTING_PROBE_INTERVAL if handle.state == STARTING else HEALTH_INTERVAL)

    def health(self, handle: ChildHandle, timeout: float = 1.0) -> tuple[int | None, dict[str, Any]]:
        """``(status, body)`` of the server's ``/health``; ``(None, {})`` when unreachable."""
        if handle.http is None:
            return None, {}
        try:
            response = handle.http.request("GET", "/health", timeout=timeout)
            return response.status, json.loads(response.data or b"{}")
        except (OSError, ValueError):
            return None, {}

    # -- stopping ----------------------------------------------------------------------------
    def stop_many(self, names: list[str], grace: float | None = None) -> dict[str, dict[str, Any]]:
        """Stop children at once (SIGTERM together, SIGKILL after one shared grace); they become
        STOPPED and stay so until started again."""
        grace = self.config.shutdown_grace if grace is None else grace
        with self._lock:
            handles = [self.handles[n] for n in names]
            for handle in handles:
                handle.state = STOPPING
                if handle.proc is not None and handle.proc.poll() is None:
                    handle.proc.terminate()
        deadline = time.monotonic() + grace
        return {handle.name: self._reap(handle, deadline) for handle in handles}

    def stop_all(self, grace: float | None = None) -> None:
        with self._lock:
            running = [n for n, h in self.handles.items() if h.proc is not None and h.proc.poll() is None]
        if running:
            logger.info("Stopping %d child process(es): %s", len(running), ", ".join(running))
            self.stop_many(running, grace)
        self._probes.shutdown(wait=False, cancel_futures=True)

    def _reap(self, handle: ChildHandle, deadline: float) -> dict[str, Any]:
        proc = handle.proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM: killing it", handle.name, proc.pid)
                proc.kill()
                code = proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        with self._lock:
            handle.state, handle.exit_code, handle.ready_at = STOPPED, code, None
        if handle.http is not None:
            handle.http.close()
            handle.http = None  # a start builds a new pool
        return {"PID": proc.pid if proc is not None else None, "RETURN_CODE": code}

    # -- views -------------------------------------------------------------------------------
    def servers(self) -> list[ChildHandle]:
        return [h for h in self.handles.values() if not h.is_support]

    def supports(self) -> list[ChildHandle]:
        return [h for h in self.handles.values() if h.is_support]

    def not_ready(self) -> dict[str, str]:
        """Model servers that are not READY: name -> state."""
        with self._lock:
            return {h.name: h.state for h in self.servers() if h.state != READY}

    def settled(self) -> bool:
        """No model server is STARTING any more."""
        with self._lock:
            return all(h.state != STARTING for h in self.servers())
