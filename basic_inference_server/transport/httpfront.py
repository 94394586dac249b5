"""The HTTP/1.1 front of the gateway and of every model server's own port: one event loop
(uvloop), httptools to parse, no thread per connection.

``POST <fast path>`` (``/run``), and any POST under ``fast_prefix`` (the gateway's V2 infer), is
handed to a handler of its own that runs in the loop and answers through a callback when its answer is
ready, so a request waiting for a model server holds no thread; what the handler returns is
cancelled (``.cancel()``) when the client leaves before its answer. Every other request goes to
a WSGI app (the Flask routes) on a thread pool. Chosen by measurement over waitress
and granian (see the README's performance section): it parses HTTP in C, holds tens of thousands
of idle connections in a few KB each, and hands nothing between threads on the hot path.

Limits, each answered with a JSON error: a request head must arrive within ``header_timeout``
of its first byte (and a new connection must send it within that time), a body within
``body_timeout`` of its head, an idle keep-alive connection is closed after
``keepalive_timeout`` (less and less once half the connection slots are taken, down to
KEEPALIVE_FLOOR when all are); heads over ``max_header_bytes`` or ``max_headers`` get 431, bodies
over ``max_body`` (declared or chunked) 413, malformed HTTP 400. Past ``max_connections`` the
connection idle the longest is closed to admit a new one; only when none is idle does a new
connection get 503. Pipelined requests are answered in order.

Memory for bodies is what the clients sent, never what they declared: a body larger than 64 KB
is read into one buffer that grows as its bytes arrive (a client that declares 8 MB and sends one
byte costs one byte). Nothing is preallocated: growing the buffer (realloc, which moves pages
without copying them) took 3.7 ms per 8 MB here against 7.6 ms for a buffer of the declared size,
zero-filled first. A connection's parser and buffers are dropped when it closes (the parser and
the protocol refer to each other), and large bodies given back return their memory to the system
(:class:`.tuning.Trimmer`).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .httpconn import HttpConnection
from .httpmsg import FrontLimits, Headers, HttpRequest, Respond, Responder

__all__ = ["FrontLimits", "Headers", "HttpConnection", "HttpFront", "HttpRequest", "Respond", "Responder"]

logger = logging.getLogger(__name__)

_SWEEP_INTERVAL = 0.5
KEEPALIVE_FLOOR = 1.0  # seconds an idle connection may stay when every connection slot is taken
_SWEEP_WORK, _CLOSE_WORK = 2000, 20  # per turn of the loop: a connection looked at costs 1, one closed 20


class HttpFront:
    """A bound listening socket served by an event loop in a background thread."""

    def __init__(self, app: Callable[..., Iterable[bytes]], host: str, port: int, *, fast_path: str,
                 threads: int, limits: FrontLimits, fast_handler: Callable[[HttpRequest, Respond], Any] | None = None,
                 fast_prefix: str = "", prefix_handler: Callable[[HttpRequest, Respond], Any] | None = None,
                 tls: ssl.SSLContext | None = None):
        self.app = app
        self.tls = tls  # serve TLS (a model server run on its own, with BIS_TLS_CERT_FILE)
        self.fast_path = fast_path.encode("latin-1")
        self.fast_handler = fast_handler
        self.fast_prefix = fast_prefix.encode("latin-1")  # POSTs under it go to prefix_handler, in the loop too
        self.prefix_handler = prefix_handler
        # (path, handler): requests to the path or under it, any method, handled in the loop too
        self.loop_routes: list[tuple[bytes, Callable[[HttpRequest, Respond], Any]]] = []
        self.limits = limits
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=4096)
        self.host, self.port = host, self.sock.getsockname()[1]
        try:
            import uvloop
            self.loop = uvloop.new_event_loop()
        except ImportError:  # no uvloop for this platform: the standard loop works, slower
            self.loop = asyncio.new_event_loop()
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="http-route")
        self.connections: set[HttpConnection] = set()
        self.idle: dict[HttpConnection, None] = {}  # connections between requests, longest idle first
        self.evicted = 0  # idle connections closed to admit new ones past max_connections
        self._evicted_logged = 0.0
        self.draining_connections = False  # answers close their connection (shutting down)
        self.refused = 0  # connections refused past MAX_CONNECTIONS
        self.refused_logged = 0.0
        self.held_back: set[object] = set()  # who asked to stop reading requests (congested channels)
        self._held_since = self._held_logged = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._date = (0, b"")

    # -- lifecycle (any thread) --------------------------------------------------------------
    def start(self) -> None:
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self._server = self.loop.run_until_complete(
                self.loop.create_server(lambda: HttpConnection(self), sock=self.sock, backlog=4096, ssl=self.tls,
                                        ssl_handshake_timeout=self.limits.header_timeout if self.tls else None))
            self.loop.call_later(_SWEEP_INTERVAL, self._sweep)
            started.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="http-loop", daemon=True)
        self._thread.start()
        started.wait(10)

    def pending_output(self) -> int:
        """Bytes of answers written but not yet sent to clients."""
        return sum(c.transport.get_write_buffer_size() for c in list(self.connections) if c.transport)

    def wait_flushed(self, timeout: float = 2.0) -> bool:
        """Wait until every answer given so far has left for its client (for a clean exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pending_output() and not any(c.busy for c in list(self.connections)):
                return True
            time.sleep(0.02)
        logger.warning("Stopping with %d bytes of answers not yet sent", self.pending_output())
        return False

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self.connections):
                conn.close()
            self.loop.stop()
        if self._thread is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(stop)
            self._thread.join(5)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- in the loop ---------------------------------------------------------------------------
    def hold_back(self, source: object, hold: bool) -> None:
        """Stop reading requests while ``source`` (a model server's channel with a large backlog
        of unsent frames) asks for it, and go on when no source does. Without this, clients that
        keep sending large bodies could take every turn of the loop, and the frames already
        admitted would wait behind them; read deadlines are moved on by the time held."""
        was_held = bool(self.held_back)
        if hold:
            self.held_back.add(source)
        else:
            self.held_back.discard(source)
        if was_held == bool(self.held_back):
            return
        if self.held_back:
            self._held_since = now = time.monotonic()
            if now - self._held_logged > 10:  # once per 10 s, however often it happens
                self._held_logged = now
                logger.warning("A model server's channel is congested: reading no requests until it drains")
        else:
            held = time.monotonic() - self._held_since
            for conn in self.connections:
                conn.deadline += held
        for conn in list(self.connections):
            conn.update_reading()

    def evict_idle(self) -> bool:
        """Close the connection idle the longest, to admit a new one while every slot is taken (as
        nginx and haproxy do under pressure); False when none is idle."""
        if not self.idle:
            return False
        victim = next(iter(self.idle))
        del self.idle[victim]
        self.connections.discard(victim)
        victim.close()
        self.evicted += 1
        now = time.monotonic()
        if now - self._evicted_logged > 10:  # once per 10 s, however many
            self._evicted_logged = now
            logger.warning("Every connection slot is taken (MAX_CONNECTIONS=%d): closing the longest idle to admit "
                           "new clients (%d so far)", self.limits.max_connections, self.evicted)
        return True

    def keepalive_now(self) -> float:
        """How long a connection may stay idle now: KEEPALIVE_TIMEOUT while the table of connections
        is at most half full, then less and less, down to KEEPALIVE_FLOOR when it is full."""
        fill = len(self.connections) / self.limits.max_connections
        if fill <= 0.5:
            return self.limits.keepalive_timeout
        return max(min(KEEPALIVE_FLOOR, self.limits.keepalive_timeout), self.limits.keepalive_timeout * 2 * (1 - fill))

    def date_header(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode("latin-1"))
        return self._date[1]

    def _sweep(self) -> None:
        """Close the connections past their read deadline (no request in progress), a slice per
        turn of the loop: ten thousand idle clients timing out together must not stall the
        requests of everyone else. Nobody times out while the front is not reading."""
        if self.held_back:
            self.loop.call_later(_SWEEP_INTERVAL, self._sweep)
            return
        self._sweep_slice(list(self.connections), 0, time.monotonic(), self.keepalive_now())

    def _sweep_slice(self, connections: list[HttpConnection], start: int, now: float, keepalive: float) -> None:
        work, index = 0, start
        while index < len(connections) and work < _SWEEP_WORK:
            conn = connections[index]
            index += 1
            work += 1
            if conn.transport is not None and not conn.busy and (
                    now > conn.deadline or (conn.idle_since is not None and now > conn.idle_since + keepalive)):
                conn.timed_out()
                work += _CLOSE_WORK
        if index < len(connections):
            self.loop.call_soon(self._sweep_slice, connections, index, now, keepalive)
        else:
            self.loop.call_later(_SWEEP_INTERVAL, self._sweep)
