"""Entry point of a model server process.

The configuration is one JSON object, read from ``--config-file PATH`` or from the first line
of stdin. When it comes on stdin the process keeps reading stdin afterwards: end-of-file means
the gateway is gone (even after a SIGKILL), and the server stops on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import exitcodes
from ..discovery import DiscoveryError, import_worker, locate_worker
from ..httpserve import HttpServer
from ..logger import Logger
from ..logs import setup_process_logging
from ..notifications import GENERAL, NotificationStore
from ..webutil import PostFront
from .app import ServerState, create_app
from .pool import WorkerPool

logger = logging.getLogger("basic_inference_server.server")


def _read_spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.config_file:
        return json.loads(Path(args.config_file).read_text(encoding="utf-8"))
    line = sys.stdin.buffer.readline()
    if not line:
        raise ValueError("no configuration on stdin")
    return json.loads(line)


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


def _fail(spec: dict[str, Any], code: int, message: str) -> int:
    logger.error("%s", message)
    error_file = spec.get("error_file")
    if error_file:
        try:
            Path(error_file).write_text(message, encoding="utf-8")
        except OSError:
            logger.exception("Cannot write %s", error_file)
    return code


def serve(spec: dict[str, Any], stop: threading.Event) -> int:
    """Load the workers, serve until ``stop`` is set, drain, return the exit code."""
    name = spec["name"]
    app_root = Path(spec.get("app_root", "."))
    try:
        location = locate_worker(app_root, spec.get("workers_location", "endpoints"),
                                 spec.get("server_class", name), spec.get("workers_suffix", "Worker"))
        worker_cls, default_config = import_worker(app_root, location)
    except DiscoveryError as exc:
        return _fail(spec, exitcodes.LOAD_FAILED, f"{name}: {exc}")

    cache = Path(spec.get("cache_folder", "_cache"))
    log = Logger(lib_name=name, base_folder=str(cache.parent), app_folder=cache.name)
    notifications = NotificationStore()
    endpoint_config = spec.get("endpoint_config", {})

    def build_worker(idx: int) -> Any:
        return worker_cls(log=log, default_config=default_config, verbosity_level=1, worker_id=idx,
                          upstream_config=endpoint_config, notifications=notifications)

    pool = WorkerPool(build_worker, int(spec.get("max_queue", 64)),
                      on_event=lambda text: notifications.add(GENERAL, "log", "ModelServer", text),
                      max_batch_size=int(spec.get("max_batch_size", 1)),
                      max_batch_wait=float(spec.get("max_batch_wait_ms", 5)) / 1000)
    state = ServerState(
        name=name, server_class=spec.get("server_class", name), class_name=location.class_name,
        host_id=spec.get("host_id", "h0000"), pool=pool, notifications=notifications,
        request_timeout=float(spec.get("request_timeout", 60)),
        max_body_bytes=int(spec.get("max_body_bytes", 8 * 1024 * 1024)),
        admin_token=spec.get("admin_token"), execution_path=spec.get("execution_path", "/run"),
    )
    host, port = spec.get("host", "127.0.0.1"), int(spec["port"])
    try:
        front = PostFront(state.run, state.execution_path, state.max_body_bytes, create_app(state))
        http = HttpServer(front, host, port, int(spec.get("server_threads", 16)), state.max_body_bytes)
    except OSError as exc:
        return _fail(spec, exitcodes.BIND_FAILED, f"{name}: cannot listen on {host}:{port}: {exc.strerror}")
    http.start()
    started = time.monotonic()
    nr_workers = int(spec.get("nr_workers", 1))
    logger.info("%s listening on %s:%d; loading %d worker(s) of %s", name, host, http.port,
                nr_workers, location.class_name)
    pool.start(nr_workers)
    while not pool.wait_loaded(0.2):
        if stop.is_set():
            break
    if pool.load_errors:
        return _fail(spec, exitcodes.LOAD_FAILED, f"{name}: _load_model failed: {'; '.join(pool.load_errors)}")
    state.loaded = True
    if not stop.is_set():
        logger.info("%s ready: %d worker(s) loaded in %.2fs", name, pool.ready, time.monotonic() - started)
        stop.wait()
    return _drain(state, http, float(spec.get("shutdown_grace", 10)))


def _drain(state: ServerState, http: HttpServer, grace: float) -> int:
    logger.info("Stopping: finishing %d request(s) in flight (grace %.0fs)", state.inflight.count, grace)
    state.draining = True
    deadline = time.monotonic() + grace
    while state.inflight.count and time.monotonic() < deadline:
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
    except (OSError, ValueError) as exc:
        print(f"basic_inference_server.server: bad configuration: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    name = spec.get("name", "server")
    logs = Path(spec.get("cache_folder", "_cache")) / "_logs"
    setup_process_logging(f"server:{name}", logs, file_stem=f"server_{name}")
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
