"""Extra checks of the bench run: how full the batches were, and slow clients holding connections.

- ``batch_counts`` reads a model server's ``GET /stats`` ``batch_size`` histogram; two readings
  around a point give the mean batch the server formed during it.
- ``IdleConnections`` opens N connections that each send half a request header and then nothing
  (a slow client), keeps them while the gateway is measured, notes when the gateway closes one,
  and closes them all at the end. Non-blocking sockets and one selector: 10,000 open in seconds.
"""

from __future__ import annotations

import errno
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable

import requests

from bench.load import rss_mb

HALF_HEADER = b"POST /run HTTP/1.1\r\nHost: x\r\n"  # no blank line: the request never ends


def batch_counts(port: int, headers: dict[str, str] | None = None) -> tuple[float, int] | None:
    """(sum, count) of the ``batch_size`` histogram of the model server on ``port`` (``headers``:
    its token), or None."""
    try:
        histogram = requests.get(f"http://127.0.0.1:{port}/stats", headers=headers, timeout=5).json()["batch_size"]
        return float(histogram["sum"]), int(sum(histogram["counts"]))
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


def mean_batch(before: tuple[float, int] | None, after: tuple[float, int] | None) -> float | None:
    """Mean batch size between two ``batch_counts`` readings (requests per ``_predict`` call)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children started later inherit
    it); returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class IdleConnections:
    """``count`` connections to ``host:port``, each having sent ``HALF_HEADER`` and nothing more."""

    def __init__(self, host: str, port: int, count: int):
        self.address, self.count = (host, port), count
        self.selector = selectors.DefaultSelector()
        self.held: dict[socket.socket, float] = {}  # open, with the half header sent -> when
        self.ended: list[float] = []  # seconds after connecting at which the server ended one
        self.answered = 0  # of those, how many got some bytes first (e.g. a 400 or 408)
        self.failed = 0  # not connected (or the half header not sent) within the time limit
        self.opened_at = 0.0
        self.open_seconds = 0.0

    def open(self, timeout: float = 10) -> None:
        """Start every connection at once, send the half header on each as it connects."""
        started = time.monotonic()
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex(self.address)
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self.failed += 1
                continue
            self.selector.register(sock, selectors.EVENT_WRITE)
        pending = len(self.selector.get_map())
        while pending and time.monotonic() - started < timeout:
            for key, _ in self.selector.select(timeout=0.5):
                sock = key.fileobj
                self.selector.unregister(sock)
                pending -= 1
                try:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        raise OSError("connect failed")
                    sock.send(HALF_HEADER)  # a few bytes on a fresh connection: never a partial send
                except OSError:
                    sock.close()
                    self.failed += 1
                    continue
                self.held[sock] = time.monotonic()
                self.selector.register(sock, selectors.EVENT_READ)
        for key in [k for k in self.selector.get_map().values() if k.events == selectors.EVENT_WRITE]:
            self.selector.unregister(key.fileobj)
            key.fileobj.close()
            self.failed += 1
        self.opened_at = time.monotonic()
        self.open_seconds = round(self.opened_at - started, 2)

    def watch(self, until: Callable[[], bool], step: float = 0.2) -> None:
        """Note every connection the server ends (readable: EOF, reset or an answer) until ``until()``."""
        while not until():
            self.poll(step)

    def poll(self, timeout: float = 0.0) -> None:
        for key, _ in self.selector.select(timeout=timeout):
            sock = key.fileobj
            try:
                if sock.recv(4096):
                    self.answered += 1
            except OSError:
                pass
            self.selector.unregister(sock)
            self.ended.append(round(time.monotonic() - self.held.pop(sock), 2))
            sock.close()

    @property
    def still_open(self) -> int:
        return len(self.held)

    def summary(self) -> dict:
        self.poll()
        return {"requested": self.count, "connected": self.still_open + len(self.ended),
                "not_connected": self.failed, "open_seconds": self.open_seconds,
                "still_open_at_end": self.still_open, "ended_by_gateway": len(self.ended),
                "answered_before_close": self.answered,
                "first_end_after_s": min(self.ended) if self.ended else None}

    def close(self) -> None:
        for sock in list(self.held):
            self.selector.unregister(sock)
            sock.close()
        self.held.clear()
        self.selector.close()


def idle_check(count: int, host: str, port: int, gateway_pid: int, load: Callable[[], dict]) -> dict:
    """Run ``load`` (a wrk run through the gateway) while ``count`` slow clients hold connections to
    it: the load's figures, the gateway's RSS, and what became of the connections."""
    out: dict = {"rss_mb_before": rss_mb([gateway_pid])}
    connections = IdleConnections(host, port, count)
    try:
        connections.open()
        out["rss_mb_opened"] = rss_mb([gateway_pid])
        result: dict = {}

        def run() -> None:
            try:
                result["load"] = load()
            except Exception as exc:  # noqa: BLE001 - reported with the check, not raised from a thread
                result["error"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=run, name="idle-check-load")
        thread.start()
        connections.watch(until=lambda: not thread.is_alive())
        thread.join()
        out["rss_mb_after_load"] = rss_mb([gateway_pid])
        out["load"] = result.get("load", {})
        if "error" in result:
            out["load_error"] = result["error"]
        out.update(connections.summary())
    finally:
        connections.close()
    return out
