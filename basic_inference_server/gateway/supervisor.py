"""The table of model-server processes and the loop that watches them.

One entry per started endpoint (name -> :class:`ServerHandle`). The gateway's main thread calls
:meth:`Supervisor.poll` a few times a second: it reaps exited children, and moves STARTING
servers to READY once their ``/health`` answers 200 (the readiness handshake), or to FAILED
when they exit or miss the startup deadline. Admin routes start and stop servers from request
threads; state changes happen under one lock, waits outside it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from .. import exitcodes
from ..config import EndpointConfig, GatewayConfig
from .ports import PortAllocator

logger = logging.getLogger(__name__)

STARTING, READY, STOPPING, STOPPED, FAILED = "STARTING", "READY", "STOPPING", "STOPPED", "FAILED"
_BIND_RETRIES = 3
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def connect_host(host: str) -> str:
    """Where the gateway connects for a server bound to ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


@dataclass
class ServerHandle:
    """One model-server process and what the gateway knows of it."""

    endpoint: EndpointConfig
    port: int
    state: str = STOPPED
    proc: subprocess.Popen | None = None
    started_at: float = 0.0  # time.monotonic() of the last spawn
    ready_at: float | None = None
    error: str | None = None
    exit_code: int | None = None
    bind_retries: int = 0
    http: urllib3.HTTPConnectionPool | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


class Supervisor:
    """Starts, watches and stops the model servers of one gateway."""

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
        self.handles: dict[str, ServerHandle] = {}
        self._lock = threading.RLock()

    # -- starting ----------------------------------------------------------------------------
    def start_enabled(self) -> None:
        """Spawn every enabled model server, in configuration order, without waiting."""
        for endpoint in self.config.model_endpoints:
            if not endpoint.disabled:
                self.start(endpoint.name)
        support = [e.name for e in self.config.endpoints if e.is_support and not e.disabled]
        if support:
            logger.warning("Support process entries are accepted but not run by this version: %s",
                           ", ".join(support))

    def start(self, name: str) -> ServerHandle:
        """Spawn the server of endpoint ``name`` (STARTING). Raises PortsExhausted."""
        endpoint = self.config.endpoint(name)
        if endpoint is None or endpoint.is_support:
            raise KeyError(name)
        with self._lock:
            handle = self.handles.get(name)
            if handle is None:
                port = self.ports.allocate(name, endpoint.host)
                handle = ServerHandle(endpoint=endpoint, port=port)
                self.handles[name] = handle
            self._spawn(handle)
            return handle

    def _spawn(self, handle: ServerHandle) -> None:
        self.run_folder.mkdir(parents=True, exist_ok=True)
        error_file = self.run_folder / f"{handle.name}.error"
        error_file.unlink(missing_ok=True)
        spec = self._spec(handle, error_file)
        if handle.proc is not None and handle.proc.stdin is not None:
            handle.proc.stdin.close()  # the previous run's pipe
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.app_root), _PACKAGE_PARENT, env.get("PYTHONPATH")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "basic_inference_server.server"],
            stdin=subprocess.PIPE,
            cwd=str(self.app_root),
            env=env,
        )
        # The configuration (secrets included) travels on the pipe, never in argv. The pipe stays
        # open: the server stops by itself when it reads end-of-file, i.e. when we are gone.
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(spec).encode("utf-8") + b"\n")
        proc.stdin.flush()
        handle.proc = proc
        handle.state = STARTING
        handle.started_at = time.monotonic()
        handle.ready_at = None
        handle.error = None
        handle.exit_code = None
        if handle.http is None or handle.http.port != handle.port:
            handle.http = urllib3.HTTPConnectionPool(
                connect_host(handle.endpoint.host), handle.port, maxsize=self.pool_size, block=False,
                retries=False,
            )
        logger.info("Starting %s (pid %d, port %d, %d workers)", handle.name, proc.pid, handle.port,
                    handle.endpoint.nr_workers)

    def _spec(self, handle: ServerHandle, error_file: Path) -> dict[str, Any]:
        endpoint = handle.endpoint
        return {
            "name": endpoint.name,
            "server_class": endpoint.server_class,
            "host": endpoint.host,
            "port": handle.port,
            "nr_workers": endpoint.nr_workers,
            "max_queue": endpoint.max_queue,
            "server_threads": endpoint.server_threads,
            "request_timeout": endpoint.request_timeout,
            "endpoint_config": dict(endpoint.worker_config),
            "app_root": str(self.app_root),
            "workers_location": self.workers_location,
            "workers_suffix": self.workers_suffix,
            "execution_path": self.execution_path,
            "cache_folder": str(self.cache_folder),
            "host_id": self.host_id,
            "admin_token": self.admin_token,
            "max_body_bytes": self.config.max_body_bytes,
            "shutdown_grace": self.config.shutdown_grace,
            "error_file": str(error_file),
        }

    # -- watching ----------------------------------------------------------------------------
    def poll(self) -> None:
        """Reap exited servers and complete readiness handshakes; called from the main loop."""
        with self._lock:
            handles = list(self.handles.values())
        for handle in handles:
            proc = handle.proc
            if proc is None:
                continue
            code = proc.poll()
            if code is not None:
                if handle.state in (STARTING, READY):
                    self._on_exit(handle, code)
            elif handle.state == STARTING:
                self._check_started(handle)

    def _check_started(self, handle: ServerHandle) -> None:
        status = self.health(handle, timeout=0.5)[0]
        with self._lock:
            if handle.state != STARTING:
                return
            if status == 200:
                handle.state = READY
                handle.ready_at = time.monotonic()
                logger.info("%s is READY (%.2fs after start)", handle.name, handle.ready_at - handle.started_at)
            elif time.monotonic() - handle.started_at > self.config.startup_timeout:
                handle.error = f"not ready after STARTUP_TIMEOUT={self.config.startup_timeout:g}s"
                logger.error("%s: %s; stopping it", handle.name, handle.error)
                handle.state = FAILED
        if handle.state == FAILED:
            self._terminate(handle)

    def _on_exit(self, handle: ServerHandle, code: int) -> None:
        error_file = self.run_folder / f"{handle.name}.error"
        detail = error_file.read_text(encoding="utf-8").strip() if error_file.exists() else ""
        with self._lock:
            if handle.state not in (STARTING, READY):
                return
            handle.exit_code = code
            if code == exitcodes.BIND_FAILED and handle.bind_retries < _BIND_RETRIES:
                handle.bind_retries += 1
                try:
                    handle.port = self.ports.allocate(handle.name, handle.endpoint.host, avoid=handle.port)
                except Exception as exc:  # noqa: BLE001 - reported as the server's error
                    detail = f"{detail}; {exc}"
                else:
                    logger.warning("%s: port taken, retrying on port %d", handle.name, handle.port)
                    self._spawn(handle)
                    return
            reason = exitcodes.DESCRIPTIONS.get(code, "exited unexpectedly")
            handle.error = f"{reason} (exit code {code})" + (f": {detail}" if detail else "")
            handle.state = FAILED
        logger.error("%s %s", handle.name, handle.error)

    def health(self, handle: ServerHandle, timeout: float = 1.0) -> tuple[int | None, dict[str, Any]]:
        """``(status, body)`` of the server's ``/health``; ``(None, {})`` when unreachable."""
        if handle.http is None:
            return None, {}
        try:
            response = handle.http.request("GET", "/health", timeout=timeout, retries=False)
            return response.status, json.loads(response.data or b"{}")
        except (urllib3.exceptions.HTTPError, ValueError):
            return None, {}

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, name: str, grace: float | None = None) -> dict[str, Any]:
        """SIGTERM one server, SIGKILL it after ``grace``; its state becomes STOPPED."""
        return self.stop_many([name], grace)[name]

    def stop_many(self, names: list[str], grace: float | None = None) -> dict[str, dict[str, Any]]:
        """Stop several servers at once (signals sent together, one shared grace period)."""
        grace = self.config.shutdown_grace if grace is None else grace
        with self._lock:
            handles = [self.handles[n] for n in names]
            for handle in handles:
                handle.state = STOPPING
        for handle in handles:
            self._terminate(handle)
        deadline = time.monotonic() + grace
        result: dict[str, dict[str, Any]] = {}
        for handle in handles:
            result[handle.name] = self._reap(handle, deadline)
        return result

    def stop_all(self, grace: float | None = None) -> None:
        with self._lock:
            running = [n for n, h in self.handles.items() if h.proc is not None and h.proc.poll() is None]
        if running:
            logger.info("Stopping %d model server(s): %s", len(running), ", ".join(running))
            self.stop_many(running, grace)

    @staticmethod
    def _terminate(handle: ServerHandle) -> None:
        if handle.proc is not None and handle.proc.poll() is None:
            handle.proc.terminate()

    def _reap(self, handle: ServerHandle, deadline: float) -> dict[str, Any]:
        proc = handle.proc
        pid = proc.pid if proc is not None else None
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
            handle.state = STOPPED
            handle.exit_code = code
            handle.ready_at = None
        if handle.http is not None:
            handle.http.close()
        return {"PID": pid, "RETURN_CODE": code}

    # -- views -------------------------------------------------------------------------------
    def not_ready(self) -> dict[str, str]:
        """Servers that are expected to run but are not READY: name -> state."""
        with self._lock:
            return {n: h.state for n, h in self.handles.items() if h.state != READY}

    def settled(self) -> bool:
        """No server is STARTING any more (each is READY, FAILED or STOPPED)."""
        with self._lock:
            return all(h.state != STARTING for h in self.handles.values())
