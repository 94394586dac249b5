"""Entry point of a model server process.

The configuration is one :class:`~.spec.ServerSpec` as JSON, read from ``--config-file PATH`` or
from the first line of stdin. When it comes on stdin the process keeps reading stdin afterwards:
end-of-file means the gateway is gone (even after a SIGKILL), and the server stops on its own.
The server listens on its HTTP port (every route) and, when the spec names one, on the Unix
socket of the internal channel, which the gateway uses for ``/run``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..logger import Logger
from ..logs import setup_process_logging
from ..openaishape import KINDS
from ..tlsfiles import server_context
from ..transport.httpfront import FrontLimits, HttpFront
from ..transport.sysshm import FILE_NAME as SHM_FILE
from ..transport.sysshm import Regions
from ..transport.tuning import freeze_loaded_objects, raise_open_file_limit
from ..webutil import endpoint_token
from .app import ServerState
from .channel import ChannelServer
from .discovery import DiscoveryError, import_worker, locate_worker
from .httpfast import serve_http
from .notifications import GENERAL, NotificationStore
from .placement import local_device, warmup_inputs
from .pool import WorkerPool
from .runpath import RunPath
from .spec import ServerSpec, SpecError
from .v2 import ModelMetadata

logger = logging.getLogger("basic_inference_server.server")


def _read_spec(args: argparse.Namespace) -> ServerSpec:
    if args.config_file:
        return ServerSpec.from_json(Path(args.config_file).read_text(encoding="utf-8"))
    line = sys.stdin.buffer.readline()
    if not line:
        raise SpecError("no configuration on stdin")
    return ServerSpec.from_json(line)


def _watch_parent(stop: threading.Event) -> None:
    """Block on stdin; EOF means the gateway died or closed our pipe."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    if not stop.is_set():
        logger.warning("Gateway pipe closed: stopping")
        stop.set()


# A server run on its own keeps answering 503 "shutting down" this long after SIGTERM: three probe
# intervals of the gateways routing to it (gateway/remote/pool.py), which then stop sending.
DRAIN_LINGER = 1.5
BODY_TIMEOUT = 300.0  # seconds a request body may take once its head has come


def _secret(path: str) -> str | None:
    """The secret its gateway wrote for this server (None: no file named, the port is open)."""
    if not path:
        return None
    try:
        secret = Path(path).read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ValueError(f"cannot read the server's secret {path}: {exc.strerror}") from None
    if not secret:
        raise ValueError(f"the server's secret {path} is empty")
    return secret


def _fail(spec: ServerSpec, code: int, message: str) -> int:
    logger.error("%s", message)
    if spec.error_file:
        try:
            Path(spec.error_file).write_text(message, encoding="utf-8")
        except OSError:
            logger.exception("Cannot write %s", spec.error_file)
    return code


def serve(spec: ServerSpec, stop: threading.Event) -> int:
    """Load the workers, serve until ``stop`` is set, drain, return the exit code."""
    name = spec.name
    try:
        location = locate_worker(Path(spec.app_root), spec.workers_location, spec.server_class, spec.workers_suffix)
        worker_cls, default_config = import_worker(Path(spec.app_root), location)
    except DiscoveryError as exc:
        return _fail(spec, exitcodes.LOAD_FAILED, f"{name}: {exc}")

    try:
        entry = {str(key).upper(): value for key, value in spec.endpoint_config.items()}
        merged = {**default_config, **entry}
        metadata = ModelMetadata.of(worker_cls, merged)
        openai = entry.get("OPENAI")  # its entry's, as the gateway routes by (not the module's _CONFIG)
        if openai is not None and openai not in KINDS:
            raise ValueError(f"OPENAI must be one of {', '.join(KINDS)}, got {openai!r}")
        warmup = warmup_inputs(merged)
    except ValueError as exc:
        return _fail(spec, exitcodes.LOAD_FAILED, f"{name}: {exc}")
    cache = Path(spec.cache_folder)
    log = Logger(lib_name=name, base_folder=str(cache.parent), app_folder=cache.name)
    notifications = NotificationStore()
    endpoint_config = dict(spec.endpoint_config)

    shared = None  # what the class's _load_shared returns, once the HTTP port is up
    device = local_device(spec.device)

    def build_worker(idx: int) -> Any:
        worker = worker_cls(log=log, default_config=default_config, verbosity_level=1, worker_id=idx,
                            upstream_config=endpoint_config, notifications=notifications)
        worker.shared, worker.device, worker.physical_device = shared, device, spec.device or None
        return worker

    pool = WorkerPool(build_worker, spec.max_queue,
                      on_event=lambda text: notifications.add(GENERAL, "log", "ModelServer", text),
                      max_batch_size=spec.max_batch_size, max_batch_wait=spec.max_batch_wait_ms / 1000,
                      warmup=warmup)
    state = ServerState(
        name=name, server_class=spec.server_class, class_name=location.class_name, host_id=spec.host_id,
        pool=pool, notifications=notifications, request_timeout=spec.request_timeout,
        stream_idle_timeout=spec.stream_idle_timeout, stream_timeout=spec.stream_timeout,
        max_body_bytes=spec.max_body_bytes, admin_token=spec.admin_token, execution_path=spec.execution_path,
        metadata=metadata, openai=openai, json_limits=spec.json_limits, shm_threshold_bytes=spec.shm_threshold_bytes,
        shm_regions=Regions(Path(spec.cache_folder) / "_run" / SHM_FILE) if spec.allow_client_shm else None,
    )
    runpath = RunPath(state)
    try:
        # Every route but /health takes a token: BIS_ENDPOINT_TOKEN for a server run on its own (if
        # set), the secret of this run for a child of a gateway (it came on stdin with the spec).
        token = endpoint_token() if spec.standalone else _secret(spec.secret_file)
        tls = server_context() if spec.standalone else None  # BIS_TLS_CERT_FILE, BIS_TLS_KEY_FILE
    except ValueError as exc:
        return _fail(spec, exitcodes.CONFIG_ERROR, f"{name}: {exc}")
    try:
        # A body may take its time (a large upload from afar), and every connection is an open file.
        limits = FrontLimits(max_body=spec.max_body_bytes, body_timeout=BODY_TIMEOUT,
                             max_connections=max(256, min(100_000, raise_open_file_limit() - 256)))
        http = serve_http(state, runpath, spec.host, spec.port, token=token, threads=spec.server_threads, limits=limits,
                          tls=tls)
    except OSError as exc:
        return _fail(spec, exitcodes.BIND_FAILED, f"{name}: cannot listen on {spec.host}:{spec.port}: {exc.strerror}")
    channel = None
    if spec.socket_path:
        try:
            channel = ChannelServer(spec.socket_path, runpath.from_channel, spec.max_body_bytes, cancel=pool.cancel)
        except OSError as exc:
            return _fail(spec, exitcodes.CONFIG_ERROR, f"{name}: cannot listen on {spec.socket_path}: {exc.strerror}")
        channel.start()
        pool.attach(channel.lobby)  # idle workers wait at the channel's sockets
    http.start()
    started = time.monotonic()
    logger.info("%s listening on %s:%d%s%s; loading %d worker(s) of %s", name, spec.host, http.port,
                " (TLS)" if tls else "",
                f" and {spec.socket_path}" if channel else "", spec.nr_workers, location.class_name)
    try:
        shared = worker_cls._load_shared(merged)
    except BaseException as exc:  # user code
        logger.exception("%s: _load_shared failed", name)
        return _fail(spec, exitcodes.LOAD_FAILED, f"{name}: _load_shared failed: {type(exc).__name__}: {exc}")
    pool.start(spec.nr_workers)
    while not pool.wait_loaded(0.2):
        if stop.is_set():
            break
    if pool.load_errors:
        return _fail(spec, exitcodes.LOAD_FAILED, f"{name}: _load_model failed: {'; '.join(pool.load_errors)}")
    frozen = freeze_loaded_objects()  # the model and its libraries: out of every full collection
    state.loaded = True
    if not stop.is_set():
        logger.info("%s ready: %d worker(s) loaded in %.2fs (%d objects frozen)", name, pool.ready,
                    time.monotonic() - started, frozen)
        stop.wait()
    try:
        return _drain(state, http, spec.shutdown_grace, DRAIN_LINGER if spec.standalone else 0.0)
    finally:
        if channel is not None:
            channel.close()


def _drain(state: ServerState, http: HttpFront, grace: float, linger: float = 0.0) -> int:
    """Finish the requests in flight (within ``grace``) while refusing new ones with 503 "shutting
    down", for at least ``linger`` seconds: a server run on its own is called by gateways that
    learn it is leaving from those answers and their probes, and must not close its port on a
    request one of them sent meanwhile."""
    logger.info("Stopping: finishing %d request(s) in flight (grace %.0fs)", state.inflight.count, grace)
    state.draining = True
    now = time.monotonic()
    deadline, lingering = now + grace, now + min(linger, grace)
    while (state.inflight.count or time.monotonic() < lingering) and time.monotonic() < deadline:
        time.sleep(0.02)
    state.pool.stop(max(0.1, deadline - time.monotonic()))
    http.wait_flushed(1.0)
    logger.info("Stopped")
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m basic_inference_server.server")
    parser.add_argument("--config-file", help="JSON file with the server configuration (default: stdin)")
    args = parser.parse_args(argv)
    try:
        spec = _read_spec(args)
    except (OSError, SpecError) as exc:
        print(f"basic_inference_server.server: bad configuration: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    setup_process_logging(f"server:{spec.name}", Path(spec.cache_folder) / "_logs", file_stem=f"server_{spec.name}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.config_file:
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    else:
        # Started by a gateway: Ctrl-C in its terminal reaches us too, but the gateway decides.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=_watch_parent, args=(stop,), name="parent-watch", daemon=True).start()
    code = serve(spec, stop)
    logging.shutdown()
    # Worker threads stuck in user code must not keep a stopped server alive.
    os._exit(code)


if __name__ == "__main__":
    main()
