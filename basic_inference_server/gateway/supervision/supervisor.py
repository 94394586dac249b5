"""The table of child processes (model servers and support processes) and the loop that keeps it true.

One entry per started endpoint (name -> :class:`ChildHandle`). The gateway's main thread calls
:meth:`Supervisor.poll` every 0.1 s; it spawns what must start, reaps what exited, restarts
crashed children with exponential backoff (1 s doubling to 30 s, reset once a child has been
READY for a minute), recycles servers whose ``/health`` keeps failing (workers stuck, or no answer
while no answer to any request comes from it either: a server busy parsing is slow to answer its
probe but goes on answering requests, a hung one answers nothing),
and marks FAILED, without restarting, a server that exits because its model cannot load.
Health probes run on a small thread pool so a hung server never stalls the loop.

States are :class:`~.handle.ChildState`; :meth:`Supervisor._transition` is the one place that
changes them, and it writes nothing itself: log lines and history events are flushed after the
lock is released, and processes are spawned outside it too, so request threads that read the
table never wait on a fork or a disk. Only the main thread spawns (a support process's death
signal is tied to the thread that forked it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import exitcodes
from ...config import EndpointConfig, GatewayConfig
from ...errors import Conflict
from ...server.spec import ServerSpec
from ..observe.sysinfo import process_tree_usage
from ..reconfigure import code_hash
from ..routing.routes import RouteTable
from ..routing.upstream import Upstream
from .changes import ChangesMixin
from .children import model_server_spec, socket_folder, spawn_model_server, spawn_support, write_secret
from .handle import FAILED, READY, RESTARTING, STARTING, STOPPED, STOPPING, ChildHandle, ChildState, replica_key
from .history import StateHistory
from .liveness import Probe, judge
from .ports import PortAllocator
from .reaper import reap_orphans
from .reload import Reloader
from .stopping import StoppingMixin

logger = logging.getLogger(__name__)

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


def backoff(failures: int) -> float:
    return min(BACKOFF_MAX, 2.0 ** max(0, failures - 1))


class Supervisor(ChangesMixin, StoppingMixin):
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
        table: RouteTable | None = None,
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
        self.table = table or RouteTable()
        self.socket_folder, self._temporary_sockets = socket_folder(cache_folder)
        self._lock = threading.RLock()
        self._events: deque[tuple[str, ChildState, ChildState, str, str | None]] = deque()  # for _flush
        self._probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health-probe")
        self.reloader = Reloader(self)
        self.table.publish_local(config.endpoints, [])

    # -- the one place that changes a child's state ------------------------------------------
    def _transition(self, handle: ChildHandle, state: ChildState, why: str = "", event: str | None = None) -> None:
        """Move ``handle`` to ``state`` (the caller holds the lock). The log line and the history
        event are queued and written by :meth:`_flush` once the lock is released: request
        threads take this lock (``/ready``, admin routes) and must not wait on a disk."""
        previous, handle.state = handle.state, state
        if state == READY:
            handle.ready_at, handle.error = time.monotonic(), None
        elif state in (FAILED, RESTARTING) and why:
            handle.error = why
        self._events.append((handle.name, previous, state, why, event))

    def _flush(self) -> None:
        """Write the queued transitions to the log and the history (never under the lock)."""
        while self._events:
            name, previous, state, why, event = self._events.popleft()
            if state is None:  # an event without a change of state (a reload)
                if self.history is not None and event is not None:
                    self.history.record(event, name, why or None)
                continue
            level = logging.ERROR if state in (FAILED, RESTARTING) else logging.INFO
            logger.log(level, "%s: %s -> %s%s", name, previous, state, f" ({why})" if why else "")
            if event is not None and self.history is not None:
                self.history.record(event, name, why or None)

    def _record(self, event: str, name: str, detail: str | None) -> None:
        """A history event that is not a change of state (under the lock, written by _flush)."""
        self._events.append((name, None, None, detail or "", event))  # type: ignore[arg-type]

    # -- starting ----------------------------------------------------------------------------
    def start_enabled(self) -> None:
        """Spawn every enabled child, in configuration order, without waiting (main thread)."""
        for endpoint in self.config.endpoints:
            if not endpoint.disabled and not endpoint.is_remote:
                with self._lock:
                    handles = [self._handle(endpoint, replica)
                               for replica in range(1 if endpoint.is_support else endpoint.nr_replicas)]
                    if endpoint.problem:  # its file does not load: FAILED until fixed and reloaded
                        self._unloadable(handles, endpoint)
                        continue
                for handle in handles:
                    self._spawn(handle)
        self._flush()

    def unloadable(self, endpoint: EndpointConfig) -> None:
        """``endpoint``'s file does not load (its ``problem``): its servers are FAILED with the
        reason, without a process (any thread)."""
        with self._lock:
            self._unloadable([self._handle(endpoint, replica) for replica in range(endpoint.nr_replicas)], endpoint)
        self._flush()

    def _unloadable(self, handles: list[ChildHandle], endpoint: EndpointConfig) -> None:
        for handle in handles:
            handle.endpoint, handle.code_hash = endpoint, code_hash(endpoint)
            self._fail(handle, f"{exitcodes.DESCRIPTIONS[exitcodes.LOAD_FAILED]}: {endpoint.problem}")

    def request_start(self, name: str) -> ChildHandle:
        """Ask for ``name`` to start (any thread); the main loop spawns it.

        Raises KeyError for a name not in the configuration, Conflict when it is running (or
        still stopping), PortsExhausted when no port is left."""
        endpoint = self.config.endpoint(name)
        if endpoint is None:
            raise KeyError(name)
        if endpoint.is_remote:
            raise Conflict(f"{name!r} is served by the model servers at its URLS; start them where they run")
        with self._lock:
            for current in self.replicas_of(name):
                if current.state not in (STOPPED, FAILED) or current.pid is not None:
                    raise Conflict(f"Signature {current.name!r} already started ({current.state})")
            started = []
            for replica in range(1 if endpoint.is_support else endpoint.nr_replicas):
                handle = self._handle(endpoint, replica)
                handle.proc, handle.failures, handle.error = None, 0, None
                self._transition(handle, STARTING, "start requested")
                started.append(handle)
        self._flush()
        return started[0]

    def _handle(self, endpoint: EndpointConfig, replica: int = 0) -> ChildHandle:
        key = replica_key(endpoint.name, replica)
        handle = self.handles.get(key)
        if handle is None:
            port = None if endpoint.is_support else self.ports.allocate(key, endpoint.host)
            handle = self.handles[key] = ChildHandle(endpoint=endpoint, port=port, replica=replica)
            self.table.publish_local(self.config.endpoints, list(self.handles.values()))
        return handle

    def replicas_of(self, name: str) -> list[ChildHandle]:
        """The children serving endpoint ``name``, first replica first (empty if none started)."""
        endpoint = self.config.endpoint(name)
        count = 1 if endpoint is None or endpoint.is_support else endpoint.nr_replicas
        keys = (replica_key(name, replica) for replica in range(count))
        return [self.handles[key] for key in keys if key in self.handles]

    def server_spec(self, endpoint: EndpointConfig, name: str, port: int, socket_path: str, error_file: Path,
                    nr_workers: int, replica: int = 0) -> ServerSpec:
        """What a model server of ``endpoint`` is started with (a child, or ``endpoint <name>``)."""
        return model_server_spec(
            endpoint, name, port, socket_path, self.config, nr_workers=nr_workers, app_root=self.app_root,
            cache_folder=self.cache_folder, error_file=error_file, host_id=self.host_id,
            admin_token=self.admin_token, workers_location=self.workers_location,
            workers_suffix=self.workers_suffix, execution_path=self.execution_path, replica=replica)

    def _spawn(self, handle: ChildHandle) -> None:
        """Start the handle's process (main thread, without the lock: Popen forks and writes)."""
        if handle.proc is not None and handle.proc.stdin is not None:
            handle.proc.stdin.close()  # the previous run's pipe
        endpoint = handle.endpoint
        if handle.is_support:
            assert endpoint.script is not None
            proc = spawn_support(endpoint.script, endpoint, connect_host(self.gateway_host), self.gateway_port,
                                 self.app_root)
        else:
            assert handle.port is not None
            error_file = self._error_file(handle)
            error_file.unlink(missing_ok=True)
            socket_path = str(self.socket_folder / f"{handle.port}.sock")
            secret, secret_file = write_secret(self.socket_folder, handle.port)  # never in its environment
            spec = dataclasses.replace(self.server_spec(endpoint, handle.name, handle.port, socket_path, error_file,
                                                        handle.nr_workers or endpoint.nr_workers, handle.replica),
                                       secret_file=str(secret_file))
            proc = spawn_model_server(spec, self.app_root)
        now = time.monotonic()
        with self._lock:
            handle.proc, handle.started_at, handle.ready_at = proc, now, None
            handle.code_hash = code_hash(endpoint)
            handle.served, handle.rss_bytes = 0, 0
            handle.recycle_after = (endpoint.max_requests + random.randint(0, endpoint.max_requests_jitter)
                                    if endpoint.max_requests else 0)
            handle.kill_at, handle.health_failures, handle.probe_due = None, 0, now
            if not handle.is_support:
                handle.socket_path = socket_path
                if handle.http is None or handle.http.port != handle.port or handle.http.closed:
                    handle.http = Upstream(connect_host(endpoint.host), handle.port, maxsize=self.pool_size)
                handle.http.token = secret
            detail = "" if handle.is_support else f", port {handle.port}, {endpoint.nr_workers} workers"
            self._transition(handle, STARTING, f"pid {proc.pid}{detail}")

    def _error_file(self, handle: ChildHandle) -> Path:
        self.run_folder.mkdir(parents=True, exist_ok=True)
        return self.run_folder / f"{handle.name}.error"

    # -- the loop ----------------------------------------------------------------------------
    def poll(self) -> None:
        """One supervision step; called by the gateway's main thread about ten times a second."""
        now = time.monotonic()
        with self._lock:
            children = list(self.handles.values()) + self.reloader.handles()
            exited = [(h, h.proc.poll()) for h in children
                      if h.proc is not None and h.state in (STARTING, READY, RESTARTING, STOPPING)]
        errors = {id(h): self._read_error(h) for h, code in exited if code is not None and not h.is_support}
        to_spawn = []
        with self._lock:
            self.reloader.step(now)
            for handle in list(self.handles.values()) + self.reloader.handles():
                if self._step(handle, now, errors.get(id(handle))):
                    to_spawn.append(handle)
                if self._probe_due(handle, now):
                    handle.probing = True
                    self._probes.submit(self._probe, handle, handle.proc)
            alive = {h.proc.pid for h in list(self.handles.values()) + self.reloader.handles()
                     if h.proc and h.proc.returncode is None}
        for handle in to_spawn:
            self._spawn(handle)
        self._flush()
        reap_orphans(alive)

    def _read_error(self, handle: ChildHandle) -> str:
        error_file = self._error_file(handle)
        try:
            return error_file.read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def _step(self, handle: ChildHandle, now: float, detail: str | None) -> bool:
        """Act on one child (under the lock); True when it must be spawned now. ``detail``: what a
        model server that had exited at this tick's first look wrote in its error file (None when it
        had not exited then)."""
        proc, state = handle.proc, handle.state
        if state == STARTING and proc is None:
            return True
        code = proc.poll() if proc is not None else None
        if code is not None and detail is None and not handle.is_support:
            return False  # it exited since this tick's first look: its error file is read at the next tick
        detail = detail or ""
        if state in (STARTING, READY):
            if code is not None:
                return self._on_exit(handle, code, now, detail)
            if handle.is_support:
                if state == STARTING and now - handle.started_at >= SUPPORT_SETTLE:
                    self._transition(handle, READY, f"{now - handle.started_at:.2f}s after start")
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
            return True
        return False

    def _on_exit(self, handle: ChildHandle, code: int, now: float, detail: str) -> bool:
        handle.exit_code = code
        if not handle.is_support:
            if code == exitcodes.BIND_FAILED and handle.bind_retries < BIND_RETRIES:
                handle.bind_retries += 1
                try:
                    handle.port = self.ports.allocate(handle.port_key or handle.name, handle.endpoint.host,
                                                      avoid=handle.port)
                except Exception as exc:  # noqa: BLE001 - reported as the server's error
                    detail = f"{detail}; {exc}"
                else:
                    logger.warning("%s: port taken, retrying on port %d", handle.name, handle.port)
                    return True
            if code in NO_RESTART_CODES:
                reason = exitcodes.DESCRIPTIONS[code]
                self._fail(handle, f"{reason} (exit code {code})" + (f": {detail}" if detail else ""))
                return False
        self._schedule_restart(handle, now, f"exited with code {code}" + (f": {detail}" if detail else ""))
        return False

    def _fail(self, handle: ChildHandle, error: str) -> None:
        routed = self.handles.get(handle.name) is handle  # not a new generation that failed to load
        self._transition(handle, FAILED, error, event="FAILED" if routed else None)

    def _schedule_restart(self, handle: ChildHandle, now: float, why: str) -> None:
        handle.failures += 1
        handle.restarts += 1
        delay = backoff(handle.failures)
        handle.restart_at = now + delay
        self._transition(handle, RESTARTING, why, event="RESTART")
        logger.info("%s: restarting in %.0fs (restart #%d)", handle.name, delay, handle.restarts)

    def _recycle(self, handle: ChildHandle, now: float) -> None:
        self._terminate(handle, now)
        self._schedule_restart(handle, now, f"unhealthy: {handle.error or 'no answer to /health'}")

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
        usage = process_tree_usage(proc.pid) if proc is not None and not starting else None
        rss = usage[0] if usage is not None else 0
        failed = None
        with self._lock:
            handle.probing = False
            if handle.proc is not proc:
                return  # the child was replaced meanwhile
            now = time.monotonic()
            verdict = judge(status, handle.progress != handle.progress_seen)
            handle.progress_seen = handle.progress
            if verdict is Probe.HEALTHY:
                handle.workers = body.get("workers", {})
                handle.health_failures = 0
                handle.rss_bytes = rss
                if handle.state == STARTING:
                    self._transition(handle, READY, f"{now - handle.started_at:.2f}s after start")
            elif verdict is Probe.BUSY:
                logger.info("%s: /health not answered within %gs, but the server answers requests: busy, "
                            "not hung", handle.name, HEALTH_TIMEOUT)
            elif handle.state == READY:
                handle.health_failures += 1
                handle.error = failed = body.get("ERROR") or f"/health answered {status or 'nothing'}"
            handle.probe_due = now + (STARTING_PROBE_INTERVAL if handle.state == STARTING else HEALTH_INTERVAL)
        if failed is not None:
            logger.warning("%s health check failed (%d in a row): %s", handle.name, handle.health_failures, failed)
        self._flush()

    def health(self, handle: ChildHandle, timeout: float = 1.0) -> tuple[int | None, dict[str, Any]]:
        """``(status, body)`` of the server's ``/health``; ``(None, {})`` when unreachable."""
        if handle.http is None:
            return None, {}
        try:
            response = handle.http.request("GET", "/health", timeout=timeout)
            return response.status, json.loads(response.data or b"{}")
        except (OSError, ValueError):
            return None, {}

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
