"""The messages of the gateway's HTTP front (:mod:`.httpfront`): its limits, a parsed request,
and how the fast path's handler answers one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .gather import Pieces

Headers = list[tuple[str, str]]
Respond = Callable[[int, bytes, "Headers | None"], None]  # status, JSON body, extra headers
JSON = "application/json"


@dataclass(frozen=True)
class FrontLimits:
    max_body: int
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10_000
    max_header_bytes: int = 65536
    max_headers: int = 100
    max_pipelined: int = 16


class HttpRequest:
    __slots__ = ("accept", "body", "headers", "keep_alive", "method", "remote", "request_id", "respond_async",
                 "target", "version")

    def __init__(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, version: str,
                 keep_alive: bool, request_id: str, remote: tuple[str, int], accept: str | None = None,
                 respond_async: bool = False):
        self.accept = accept
        self.respond_async = respond_async  # Prefer: respond-async (RFC 7240): a job, not a wait
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.request_id = request_id
        self.remote = remote

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if len(key) == len(name) and key.lower() == name:
                return value
        return None


class Refused(Exception):
    """Raised from a parser callback to answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Responder:
    """How the fast handler answers its request: call it once (JSON), or stream the answer."""

    __slots__ = ("conn", "request")

    def __init__(self, conn: Any, request: HttpRequest):
        self.conn = conn
        self.request = request

    def __call__(self, status: int, body: bytes | Pieces, headers: Headers | None, content_type: str = JSON) -> None:
        self.conn.respond(self.request, status, body, headers, content_type)

    def start_stream(self, content_type: str, first: bytes = b"") -> bool:
        """Begin a streamed answer with its first piece; the same answer as :meth:`chunk`."""
        return self.conn.start_stream(self.request, content_type, first)

    def chunk(self, data: bytes) -> bool:
        """Send a piece; True while the client keeps up (else wait for the handler's ``resumed``)."""
        return self.conn.send_chunk(data)

    def end_stream(self, data: bytes) -> None:
        self.conn.end_stream(self.request, data)
