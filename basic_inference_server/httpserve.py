"""Serve a WSGI app with waitress (never Werkzeug's development server), in a thread.

The caller binds first (a busy port raises ``OSError`` at once), then runs the loop in a daemon
thread and keeps its main thread for supervision and signals. Stopping is done by the owner:
it stops handing out work, waits for in-flight requests, then calls :meth:`wait_flushed` so the
last answers leave the socket before the process exits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from .errors import error_body, from_http_status
from .jsonutil import dumps_bytes

logger = logging.getLogger(__name__)


class _JsonErrorTask(ErrorTask):
    """Errors waitress answers itself (body over its limit, malformed HTTP) in our JSON shape."""

    def execute(self) -> None:
        error = self.request.error
        message = f"{error.reason}: {error.body}" if error.body else error.reason
        body = dumps_bytes(error_body(from_http_status(error.code, message).error_type, message))
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonErrorChannel(HTTPChannel):
    error_task_class = _JsonErrorTask


class HttpServer:
    """A bound waitress server running in a background thread."""

    def __init__(
        self,
        app: Callable[..., Any],
        host: str,
        port: int,
        threads: int,
        max_body_bytes: int,
        connection_limit: int = 1000,
    ):
        self._server = waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="basic_inference_server",
            connection_limit=connection_limit,
            # waitress buffers the body before the app sees it; its own limit sits above ours so
            # that a body just over our limit is answered by our JSON 413, and a huge one is
            # cut by waitress before it fills the disk.
            max_request_body_size=max(2 * max_body_bytes, max_body_bytes + 1024 * 1024),
            channel_timeout=300,
            expose_tracebacks=False,
            clear_untrusted_proxy_headers=True,
        )
        self._server.channel_class = _JsonErrorChannel
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name="http-loop", daemon=True)
        self._thread.start()

    def pending_output(self) -> int:
        """Bytes accepted from the app but not yet written to clients."""
        total = 0
        for channel in list(self._server._map.values()):
            total += getattr(channel, "total_outbufs_len", 0) or 0
        return total

    def wait_flushed(self, timeout: float = 2.0) -> bool:
        """Wait until every answer given by the app has been written to its socket."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pending_output():
                return True
            time.sleep(0.02)
        logger.warning("Stopping with %d bytes of answers not yet sent", self.pending_output())
        return False


class InFlight:
    """Counts requests being served, so that a shutdown can wait for them (``with inflight: ...``),
    and bounds them without blocking (:meth:`try_enter`)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self._count += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._count -= 1

    def enter(self) -> None:
        with self._lock:
            self._count += 1

    def try_enter(self, limit: int) -> bool:
        """Count one more request unless ``limit`` are already in; never waits."""
        with self._lock:
            if self._count >= limit:
                return False
            self._count += 1
            return True

    def exit(self) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count
