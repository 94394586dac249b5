"""``FlaskGateway``: the gateway process — one HTTP port in front of supervised model servers."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..config import ConfigError, GatewayConfig, load_config, parse_config
from ..lib_ver import LIB_VER
from ..logs import logging_configured, setup_process_logging
from ..tlsfiles import client_context
from ..transport.httpfront import FrontLimits, HttpFront
from ..transport.tuning import freeze_loaded_objects, raise_open_file_limit
from ..webutil import RequestIds, endpoint_token
from .apikeys import ENV as API_KEYS_ENV
from .apikeys import ApiKeys, KeysCollector
from .app import GatewayParts, create_gateway_app, is_loopback
from .auth import resolve_admin_token
from .jobs import Jobs
from .observe.metrics import GatewayMetrics
from .observe.status import system_status
from .reconfigure import Reconfiguration
from .remote.pool import RemoteEndpoints
from .routing.envelope import Envelope
from .routing.openaipath import loop_routes as openai_routes
from .routing.router import Admission, Router
from .routing.runpath import RunPath
from .routing.v2path import V2_MODELS, InferPath
from .supervision.history import StateHistory
from .supervision.supervisor import Supervisor
from .support_data import SupportData

logger = logging.getLogger(__name__)


MAX_IN_FLIGHT = 8192  # requests forwarded at once by the whole gateway (each endpoint has its own bound too)


class GatewayStartupError(Exception):
    """The gateway cannot start (port taken, no port left for a server, ...)."""


class FlaskGateway:
    """The gateway: reads the configuration, starts one model server per enabled endpoint,
    routes ``/run`` by ``SIGNATURE`` and stops everything cleanly.

    As in the original, building it runs it until shutdown (``run=True``); pass ``run=False``
    and call :meth:`run` yourself to get the exit code.

    Args:
        log: a :class:`~basic_inference_server.Logger`; its ``config_data`` is used as the
            configuration when it holds ``CONFIG_ENDPOINTS``, and its folders as the cache.
        workers_location: dotted folder of the endpoint files, relative to ``app_root``.
        workers_suffix: class-name suffix of workers (``Worker``).
        host, port: where the gateway listens.
        first_server_port, last_server_port: port range of the model servers (5003-5010).
        server_execution_path: the forwarded run route (``/run``).
        config_file: configuration file used when ``log`` holds none.
        config: a ready configuration (dict or :class:`GatewayConfig`), overrides the file.
        app_root: folder holding the endpoints folder (default: the current directory).
        app_version: reported as ``ver-app``.
        server_names: accepted for code written for the original and ignored: the
            configuration's ``CONFIG_ENDPOINTS`` says which endpoints run.
        strict: exit with code 2 when an endpoint fails to start (as ``STRICT_STARTUP``); by
            default an endpoint whose file does not import or whose model does not load is
            FAILED with the reason, and the others serve.
    """

    def __init__(
        self,
        log: Any = None,
        workers_location: str = "endpoints",
        workers_suffix: str = "Worker",
        host: str = "127.0.0.1",
        port: int = 5002,
        first_server_port: int | None = None,
        last_server_port: int | None = None,
        server_execution_path: str = "/run",
        config_file: str | os.PathLike = "config_gateway.txt",
        config: GatewayConfig | Mapping[str, Any] | None = None,
        base_folder: str | None = None,
        app_folder: str | None = None,
        app_root: str | os.PathLike | None = None,
        app_version: str | None = None,
        run: bool = True,
        server_names: list[str] | None = None,
        strict: bool = False,
    ):
        self.app_root = Path(app_root or os.getcwd()).resolve()
        if log is not None and hasattr(log, "root_folder"):
            self.cache_folder = Path(log.root_folder)
        else:
            self.cache_folder = (self.app_root / (base_folder or ".") / (app_folder or "_cache")).resolve()
        if not logging_configured():
            setup_process_logging("gateway", self.cache_folder / "_logs", file_stem="gateway")
        if server_names is not None:
            logger.warning("FlaskGateway(server_names=...) is ignored: CONFIG_ENDPOINTS lists the endpoints")
        self.host = host
        self.port = port
        self.execution_path = "/" + server_execution_path.lstrip("/")
        self.workers_location = workers_location
        self.workers_suffix = workers_suffix
        self._config_path: Path | None = None  # the file the configuration was read from, if any
        self._port_flags = (first_server_port, last_server_port)
        config = self._with_port_flags(self._load_config(log, config, config_file))
        self.strict = strict or config.strict_startup
        problems = config.file_problems()
        if problems and self.strict:
            raise ConfigError("; ".join(problems) + " (strict start: no endpoint may fail)")
        for problem in problems:
            logger.error("%s: the endpoint is FAILED, the others start (fix the file, then reload)", problem)
        self.exit_code = 0
        self.host_id = "h" + secrets.token_hex(2)
        self.envelope = Envelope(app_version or _read_app_version(self.app_root))
        self.admin = resolve_admin_token(config.admin_token, self.cache_folder / "_data", self.app_root)
        self.admin_token = self.admin.value
        self.history = StateHistory(self.cache_folder / "_data")
        self.support_data = SupportData()
        self.supervisor = Supervisor(
            config, self.app_root, self.cache_folder, self.host_id, self.admin_token,
            workers_location, workers_suffix, self.execution_path, pool_size=config.gateway_threads + 4,
            history=self.history,
        )
        self.remote = RemoteEndpoints(config.endpoints, self.supervisor.routes)
        self.supervisor.routes.publish_pipelines(config.pipelines)
        read = (lambda: self._with_port_flags(self._read_config())) if self._config_path is not None else None
        self.reconfiguration = Reconfiguration(read, self.supervisor, self.remote, self.history)
        self.metrics = GatewayMetrics(self.supervisor.routes)
        self.admission = Admission(MAX_IN_FLIGHT)
        self.router = Router(self.supervisor.routes, self.envelope, self.admission, config.response_format)
        self._stop = threading.Event()
        self._hup = threading.Event()
        self.http: HttpFront | None = None
        self.run_path: RunPath | None = None
        self.jobs: Jobs | None = None
        self.keys = ApiKeys()  # BIS_API_KEYS_FILE, read when the gateway starts serving
        if run:
            self.run()

    def _load_config(self, log: Any, config: Any, config_file: str | os.PathLike) -> GatewayConfig:
        if isinstance(config, GatewayConfig):
            return config
        if config is None and log is not None and "CONFIG_ENDPOINTS" in getattr(log, "config_data", {}):
            config = log.config_data
        if config is not None:
            return parse_config(config, self.app_root, self.workers_location, self.workers_suffix)
        path = Path(config_file)
        if not path.is_absolute():
            path = self.app_root / path
        self._config_path = path
        return self._read_config()

    def _read_config(self) -> GatewayConfig:
        assert self._config_path is not None
        return load_config(self._config_path, self.cache_folder / "_data", self.app_root, self.workers_location,
                           self.workers_suffix)

    def _with_port_flags(self, config: GatewayConfig) -> GatewayConfig:
        """The command line's port range wins over the configuration's."""
        first_flag, last_flag = self._port_flags
        if first_flag is None and last_flag is None:
            return config
        first = first_flag or config.first_server_port
        last = last_flag or first + 7
        if last < first:
            raise ConfigError(f"last server port {last} is below the first server port {first}")
        return replace(config, first_server_port=first, last_server_port=last)

    @property
    def config(self) -> GatewayConfig:
        """The configuration in force (its endpoints change with reloads: :mod:`.reconfigure`)."""
        return self.supervisor.config

    def parts(self) -> GatewayParts:
        """What the gateway's Flask routes work with."""
        return GatewayParts(
            config=lambda: self.config, host=self.host, execution_path=self.execution_path, admin=self.admin,
            envelope=self.envelope, router=self.router, supervisor=self.supervisor, remote=self.remote,
            reconfiguration=self.reconfiguration, metrics=self.metrics, history=self.history,
            support_data=self.support_data, system_status=self.system_status, support_status=self.support_status,
            not_ready=self.not_ready, request_stop=self.request_stop, keys=self.keys,
            jobs_queue=lambda: self.jobs.stats.queue() if self.jobs is not None else {})

    def reload_config(self, wait: bool = False) -> dict[str, Any]:
        """``POST /reload_config`` and SIGHUP (:meth:`.reconfigure.Reconfiguration.reload_config`)."""
        return self.reconfiguration.reload_config(wait)

    # -- lifecycle ---------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Ask the main loop to stop (signal handlers and /shutdown call this)."""
        self._stop.set()

    def run(self) -> int:
        """Serve until SIGTERM, SIGINT or /shutdown; return the exit code (0 after a clean stop, 2
        when a strict start stopped because an endpoint failed)."""
        started = time.monotonic()
        logger.info("basic_inference_server %s, app %s, host id %s, pid %d", LIB_VER,
                    self.envelope.app_version, self.host_id, os.getpid())
        files = raise_open_file_limit()
        config = self.config
        limits = FrontLimits(
            max_body=config.max_body_bytes, header_timeout=config.header_timeout, body_timeout=config.body_timeout,
            keepalive_timeout=config.keepalive_timeout,
            max_connections=config.max_connections or max(256, min(100_000, files - 1024)),
        )
        try:
            token = endpoint_token()  # sent to the model servers of remote endpoints
            self.remote.token = token
            self.remote.tls = client_context()  # how those of https:// URLS are checked (BIS_TLS_CA_FILE)
            self.keys = ApiKeys(os.environ.get(API_KEYS_ENV) or None)
        except ValueError as exc:  # (BIS_API_KEYS_FILE that is not a keys file)
            raise GatewayStartupError(str(exc)) from None
        self.reconfiguration.keys = self.keys
        try:
            self.http = HttpFront(RequestIds(create_gateway_app(self.parts())), self.host, self.port,
                                  fast_path=self.execution_path, threads=config.gateway_threads, limits=limits,
                                  fast_prefix=V2_MODELS)
        except OSError as exc:
            raise GatewayStartupError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        self.run_path = RunPath(self.router, self.metrics, self.http.loop, self.http.executor, self.system_status,
                                congested=self.http.hold_back, endpoint_token=token, keys=self.keys)
        self.http.fast_handler = self.run_path
        self.http.prefix_handler = InferPath(self.run_path)
        try:
            self.jobs = Jobs.open(self.cache_folder / "_data" / "jobs", config, self.http.loop, self.router,
                                  self.run_path, self.keys, self.admin_token)
        except ValueError as exc:  # BIS_WEBHOOK_SECRET that is not one, a password file that cannot be read
            self.http.close()
            raise GatewayStartupError(str(exc)) from None
        self.http.loop_routes += self.jobs.routes() + openai_routes(self.run_path)
        self.metrics.registry.register(self.jobs.collector())
        self.metrics.registry.register(KeysCollector(self.keys))
        self.run_path.jobs = self.jobs.path.submit_async
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
            signal.signal(signal.SIGHUP, lambda *_: self._hup.set())  # gunicorn's convention: reload
        self.supervisor.gateway_host, self.supervisor.gateway_port = self.host, self.http.port
        self.history.record("STARTUP", detail=f"pid {os.getpid()}, port {self.http.port}")
        try:
            self.supervisor.start_enabled()
        except Exception:
            self.supervisor.stop_all(grace=2.0)
            raise
        self.remote.start()
        self.http.start()
        freeze_loaded_objects()  # the app and its libraries: out of every full collection
        logger.info("Gateway listening on %s:%d", self.host, self.http.port)
        if not self.config.protect_notifications and not is_loopback(self.host):
            logger.warning("/notifications is open to every client that reaches %s:%d, and returns what endpoint "
                           "code wrote with _create_notification (the demos write their callers' inputs): set "
                           "PROTECT_NOTIFICATIONS to true to require the admin token", self.host, self.http.port)
        announced = False
        while not self._stop.is_set():
            self.supervisor.poll()
            if self._hup.is_set():
                self._hup.clear()
                logger.info("SIGHUP: reloading the configuration")
                self.reconfiguration.reload_in_background()
            if not announced and self.supervisor.settled():
                announced = True
                if not self._announce(time.monotonic() - started) and self.strict:
                    logger.error("Strict start (--strict, STRICT_STARTUP): an endpoint failed to start: stopping")
                    self.exit_code = exitcodes.CONFIG_ERROR
                    self._stop.set()
            self._stop.wait(0.05 if not announced else 0.1)
        return self._shutdown()

    def system_status(self) -> dict[str, Any]:
        """The body of ``/system_status``: machine, gateway, children, support data, history."""
        status = system_status(self.config.server_name, list(self.supervisor.handles.values()))
        status["SYSTEM_STATUS"]["system_support_services"] = self.support_status()
        status["SYSTEM_HISTORY"] = self.history.snapshot()
        return status

    def support_status(self) -> dict[str, Any]:
        """The latest data each support process posted, with its age and a stale flag."""
        intervals = {e.name: e.ping_interval for e in self.config.endpoints if e.is_support and not e.disabled}
        return self.support_data.view(intervals)

    def not_ready(self) -> dict[str, str]:
        """What keeps the gateway from being ready: model servers that are not READY, and remote
        endpoints without a READY address (name -> why)."""
        return {**self.supervisor.not_ready(), **self.remote.not_ready()}

    def _announce(self, elapsed: float) -> bool:
        """Log how the start went; whether every model server is READY."""
        waiting = self.supervisor.not_ready()
        if waiting:
            logger.error("Startup finished in %.2fs; NOT ready: %s", elapsed,
                         ", ".join(f"{n} ({self.supervisor.handles[n].error})" for n in waiting))
        else:
            logger.info("All %d model server(s) ready in %.2fs", len(self.supervisor.handles), elapsed)
        return not waiting

    def _shutdown(self) -> int:
        grace = self.config.shutdown_grace
        inflight = self.admission.inflight
        logger.info("Shutting down: %d request(s) in flight, grace %.0fs", inflight.count, grace)
        self.admission.draining = True
        if self.http is not None:
            self.http.draining_connections = True  # answers from now on close their connection
        deadline = time.monotonic() + grace
        while inflight.count and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.jobs is not None and self.http is not None:
            self.jobs.close(self.http.loop)  # what ended is recorded; what still runs is run again at next start
        self.supervisor.stop_all(max(1.0, deadline - time.monotonic()))
        self.remote.stop()
        self.history.record("SHUTDOWN")
        if self.http is not None:
            self.http.wait_flushed(2.0)
            self.http.close()
        logger.info("Gateway stopped")
        return self.exit_code


def _read_app_version(app_root: Path) -> str:
    """``__VER__`` of the app's ``app_ver.py`` (read, not imported), else ``0.0.0``."""
    path = app_root / "app_ver.py"
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("__VER__"):
                return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return "0.0.0"
