"""The supervisor of a gateway's children (model servers and support processes).

It owns a :class:`~.table.ChildTable` (the handles, the lock, the one function that changes a
child's state, the history records, the route snapshots) and works through it with its
collaborators: :class:`~.restarts.RestartPolicy` (what the loop decides about each child),
:class:`~.probes.Prober` (health probes on their own threads), :class:`~.reload.Reloader`
(blue-green reloads and recycles) and :class:`~.stopping.Stopper`. The gateway's main thread
calls :meth:`Supervisor.poll` every 0.1 s: it spawns what must start, reaps what exited, restarts,
recycles and probes. Processes are spawned outside the lock (request threads that read the table
never wait on a fork or a disk), and only by the main thread (a support process's death signal is
tied to the thread that forked it).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

from ... import exitcodes
from ...config import EndpointConfig, GatewayConfig
from ...errors import Conflict
from ...server.spec import ServerSpec
from ..routing.routes import RouteTable
from ..routing.upstream import Upstream
from .children import model_server_spec, socket_folder, spawn_model_server, spawn_support, write_secret
from .handle import FAILED, READY, RESTARTING, STARTING, STOPPED, STOPPING, ChildHandle, replica_key
from .history import StateHistory
from .ports import PortAllocator
from .probes import Prober
from .reaper import reap_orphans
from .reload import Reload, Reloader
from .restarts import RestartPolicy
from .stopping import Stopper
from .table import ChildTable

logger = logging.getLogger(__name__)


def connect_host(host: str) -> str:
    """Where the gateway connects for a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "localhost", "": "127.0.0.1"}.get(host, host)


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
        table: RouteTable | None = None,
    ):
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
        self.gateway_host = "127.0.0.1"  # set by the gateway once it listens (support processes post there)
        self.gateway_port = 0
        self.children = ChildTable(config, table, history)
        self.routes = self.children.routes  # the route snapshots the table publishes
        self.socket_folder, self._temporary_sockets = socket_folder(cache_folder)
        self.prober = Prober(self.children)
        self.policy = RestartPolicy(self.children, self.ports)
        self.reloader = Reloader(self.children, self.ports)
        self.stopper = Stopper(self.children)

    # -- what the table holds ----------------------------------------------------------------------
    @property
    def config(self) -> GatewayConfig:
        """The configuration in force (its endpoints change with reloads)."""
        return self.children.config

    @property
    def handles(self) -> dict[str, ChildHandle]:
        return self.children.handles

    def replicas_of(self, name: str) -> list[ChildHandle]:
        """The children serving endpoint ``name``, first replica first (empty if none started)."""
        return self.children.replicas_of(name)

    def servers(self) -> list[ChildHandle]:
        return self.children.servers()

    def supports(self) -> list[ChildHandle]:
        return self.children.supports()

    def not_ready(self) -> dict[str, str]:
        """Model servers that are not READY: name -> state."""
        with self.children.lock:
            return {h.name: h.state for h in self.servers() if h.state != READY}

    def settled(self) -> bool:
        """No model server is STARTING any more."""
        with self.children.lock:
            return all(h.state != STARTING for h in self.servers())

    # -- starting ----------------------------------------------------------------------------------
    def start_enabled(self) -> None:
        """Spawn every enabled child, in configuration order, without waiting (main thread)."""
        children = self.children
        for endpoint in self.config.endpoints:
            if not endpoint.disabled and not endpoint.is_remote:
                with children.lock:
                    handles = [self._handle(endpoint, replica)
                               for replica in range(1 if endpoint.is_support else endpoint.nr_replicas)]
                    if endpoint.problem:  # its file does not load: FAILED until fixed and reloaded
                        self._unloadable(handles, endpoint)
                        continue
                for handle in handles:
                    self._spawn(handle)
        children.flush()

    def unloadable(self, endpoint: EndpointConfig) -> None:
        """``endpoint``'s file does not load (its ``problem``): its servers are FAILED with the
        reason, without a process (any thread)."""
        with self.children.lock:
            self._unloadable([self._handle(endpoint, replica) for replica in range(endpoint.nr_replicas)], endpoint)
        self.children.flush()

    def _unloadable(self, handles: list[ChildHandle], endpoint: EndpointConfig) -> None:
        for handle in handles:
            handle.endpoint, handle.code_hash = endpoint, endpoint.code_hash()
            self.children.fail(handle, f"{exitcodes.DESCRIPTIONS[exitcodes.LOAD_FAILED]}: {endpoint.problem}")

    def request_start(self, name: str) -> ChildHandle:
        """Ask for ``name`` to start (any thread); the main loop spawns it.

        Raises KeyError for a name not in the configuration, Conflict when it is running (or
        still stopping), PortsExhausted when no port is left."""
        endpoint = self.config.endpoint(name)
        if endpoint is None:
            raise KeyError(name)
        if endpoint.is_remote:
            raise Conflict(f"{name!r} is served by the model servers at its URLS; start them where they run")
        children = self.children
        with children.lock:
            for current in self.replicas_of(name):
                if current.state not in (STOPPED, FAILED) or current.pid is not None:
                    raise Conflict(f"Signature {current.name!r} already started ({current.state})")
            started = []
            for replica in range(1 if endpoint.is_support else endpoint.nr_replicas):
                handle = self._handle(endpoint, replica)
                handle.proc, handle.failures, handle.error = None, 0, None
                children.transition(handle, STARTING, "start requested")
                started.append(handle)
        children.flush()
        return started[0]

    def _handle(self, endpoint: EndpointConfig, replica: int = 0) -> ChildHandle:
        """The handle of one replica of ``endpoint`` (a new one, with its port, if it has none)."""
        key = replica_key(endpoint.name, replica)
        handle = self.handles.get(key)
        if handle is None:
            port = None if endpoint.is_support else self.ports.allocate(key, endpoint.host)
            handle = ChildHandle(endpoint=endpoint, port=port, replica=replica)
            self.children.add(handle)
        return handle

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
            error_file = self.error_file(handle)
            error_file.unlink(missing_ok=True)
            socket_path = str(self.socket_folder / f"{handle.port}.sock")
            secret, secret_file = write_secret(self.socket_folder, handle.port)  # never in its environment
            spec = dataclasses.replace(self.server_spec(endpoint, handle.name, handle.port, socket_path, error_file,
                                                        handle.nr_workers or endpoint.nr_workers, handle.replica),
                                       secret_file=str(secret_file))
            proc = spawn_model_server(spec, self.app_root)
        children = self.children
        now = children.clock()
        with children.lock:
            handle.proc, handle.started_at, handle.ready_at = proc, now, None
            handle.code_hash = endpoint.code_hash()
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
            children.transition(handle, STARTING, f"pid {proc.pid}{detail}")

    def error_file(self, handle: ChildHandle) -> Path:
        """Where a model server writes why it could not start (its last words)."""
        self.run_folder.mkdir(parents=True, exist_ok=True)
        return self.run_folder / f"{handle.name}.error"

    # -- the loop ----------------------------------------------------------------------------------
    def poll(self) -> None:
        """One supervision step; called by the gateway's main thread about ten times a second."""
        children = self.children
        now = children.clock()
        with children.lock:
            watched = list(self.handles.values()) + self.reloader.handles()
            exited = [(h, h.proc.poll()) for h in watched
                      if h.proc is not None and h.state in (STARTING, READY, RESTARTING, STOPPING)]
        errors = {id(h): self._read_error(h) for h, code in exited if code is not None and not h.is_support}
        to_spawn = []
        with children.lock:
            self.reloader.step(now)
            watched = list(self.handles.values()) + self.reloader.handles()
            to_spawn = [h for h in watched if self.policy.step(h, now, errors.get(id(h)))]
            self.prober.start_due(watched, now)
            alive = {h.proc.pid for h in watched if h.proc and h.proc.returncode is None}
        for handle in to_spawn:
            self._spawn(handle)
        children.flush()
        reap_orphans(alive)

    def _read_error(self, handle: ChildHandle) -> str:
        try:
            return self.error_file(handle).read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    # -- changes while it runs ---------------------------------------------------------------------
    def request_reload(self, name: str, endpoint: EndpointConfig) -> Reload:
        """Replace ``name``'s servers by a new generation with ``endpoint`` (any thread); the main
        loop does it. Raises KeyError when ``name`` has no started server."""
        with self.children.lock:
            if not self.replicas_of(name) or endpoint.is_support:
                raise KeyError(name)
            return self.reloader.request(name, endpoint)

    def reload_and_wait(self, name: str, endpoint: EndpointConfig) -> Reload:
        """:meth:`request_reload`, then wait for it: as long as each replica may take to start and
        for its predecessor's requests to finish (still STARTING when it took longer)."""
        reload = self.request_reload(name, endpoint)
        reload.done.wait((self.config.startup_timeout + endpoint.request_timeout + 10) * endpoint.nr_replicas)
        return reload

    def reload_refused(self, name: str, error: str) -> Reload:
        """A reload that could not begin (the new configuration or file does not read): reported
        as one that failed; nothing changes."""
        with self.children.lock:
            reload = self.reloader.refused(name, error)
        self.children.flush()
        return reload

    def wait_started(self, names: list[str]) -> list[str]:
        """Wait until every replica of ``names`` is READY, as long as one may take to start; the
        names that are not READY by then, or that can no longer become READY without being asked
        (a replica FAILED, stopping or stopped, or the endpoint gone)."""
        deadline = time.monotonic() + self.config.startup_timeout + 10
        while True:
            with self.children.lock:
                states = {name: [h.state for h in self.replicas_of(name)] for name in names}
            waiting = [name for name, got in states.items() if not got or any(s is not READY for s in got)]
            hopeless = [name for name in waiting
                        if not states[name] or any(s in (FAILED, STOPPING, STOPPED) for s in states[name])]
            if len(hopeless) == len(waiting) or time.monotonic() > deadline:
                return waiting
            time.sleep(0.05)

    def endpoint_entry(self, endpoint: EndpointConfig) -> None:
        """Put a new entry in force for one configured endpoint (what its next start uses)."""
        with self.children.lock:
            self.children.endpoint_changed(endpoint)

    def set_endpoints(self, endpoints: tuple[EndpointConfig, ...]) -> None:
        """The configured endpoints from now on (a reloaded configuration)."""
        with self.children.lock:
            self.children.set_endpoints(endpoints)

    def remove_endpoints(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """Endpoints gone from the configuration: out of the route table at once (404 for new
        requests), then each server is stopped once it holds no request (those it was sent are
        answered), and its port is freed."""
        if not names:
            return {}
        with self.children.lock:
            for name in names:
                self.reloader.drop(name)  # a reload or recycle under way must not bring it back
            handles = self.children.remove(names)
        deadline = time.monotonic() + max(h.endpoint.request_timeout for h in handles) + 5 if handles else 0
        while any(h.inflight.count for h in handles) and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped = self.stopper.stop(handles, self.config.shutdown_grace)
        for handle in handles:
            self.ports.release(handle.port_key or handle.name)
        return stopped

    # -- stopping ----------------------------------------------------------------------------------
    def stop_many(self, names: list[str], grace: float | None = None) -> dict[str, dict[str, Any]]:
        """Stop children at once (SIGTERM together, SIGKILL after one shared grace); they become
        STOPPED and stay so until started again."""
        with self.children.lock:
            handles = [self.handles[n] for n in names]
        return self.stopper.stop(handles, self.config.shutdown_grace if grace is None else grace)

    def stop_all(self, grace: float | None = None) -> None:
        """Stop every child (generations loading or draining for a reload too), and clean up."""
        grace = self.config.shutdown_grace if grace is None else grace
        with self.children.lock:
            running = [n for n, h in self.handles.items() if h.proc is not None and h.proc.poll() is None]
            others = [h for h in self.reloader.handles() if h.proc is not None and h.proc.poll() is None]
        for handle in others:  # generations loading for a reload, or draining after one
            handle.proc.terminate()
        if running:
            logger.info("Stopping %d child process(es): %s", len(running), ", ".join(running))
            self.stop_many(running, grace)
        for handle in others:
            self.stopper.reap(handle, time.monotonic() + grace)
        self.close()

    def close(self) -> None:
        """Stop the probes and remove the servers' sockets and secrets (after the children)."""
        self.prober.close()
        if self._temporary_sockets:
            shutil.rmtree(self.socket_folder, ignore_errors=True)
        else:
            for secret in self.socket_folder.glob("*.secret"):  # the servers' secrets go with them
                secret.unlink(missing_ok=True)
