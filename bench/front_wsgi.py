"""The gateway's ``/run`` as a plain WSGI app, to measure thread-per-request HTTP fronts against the gateway's own.

    .venv/bin/python -m bench.front_wsgi --socket PATH --port P [--threads 16]       # under waitress
    BENCH_FRONT_SOCKET=PATH granian --interface wsgi --factory bench.front_wsgi:create_app ...

Per request it does what the gateway's ``/run`` does (``basic_inference_server/gateway/runpath.py``),
minus the metrics and the admission counters: read the body, read its ``SIGNATURE`` without parsing
it (``Router.signature_in``), forward the body as one REQUEST frame
(``basic_inference_server/transport/frames.py``) to the model server's Unix socket, wait for the
REPLY of that tag, route again from the parsed body on MISROUTED, add the envelope to a 200 answer
(``Envelope.wrap``) and answer JSON with Content-Length and ``X-Request-ID``.

Each serving thread has its own blocking connection to the model server with one request in
flight on it, which is the natural shape for a thread-per-request server (the gateway's event loop
instead multiplexes many requests on one connection).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from basic_inference_server import jsonbody, jsonutil, requestid
from basic_inference_server.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServerDied,
    ServingError,
    UnknownSignature,
)
from basic_inference_server.gateway.routing.envelope import Envelope
from basic_inference_server.gateway.routing.router import Router
from basic_inference_server.transport.frames import MISROUTED, REPLY, FrameReader, request_head

logger = logging.getLogger(__name__)

SOCKET_ENV = "BENCH_FRONT_SOCKET"  # the model server's Unix socket, for create_app() without arguments
SIGNATURE_ENV = "BENCH_FRONT_SIGNATURE"  # the one endpoint served (the model server's name)
READ_SIZE = 65536
REQUEST_TIMEOUT = 60.0  # the gateway's default REQUEST_TIMEOUT
MAX_BODY = 8 * 1024 * 1024  # the gateway's default MAX_BODY_MB
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Servers:
    """What ``Router.signature_in`` reads of the route table: the names being served."""

    def __init__(self, names: Iterable[str]):
        self.servers = dict.fromkeys(names)


class _Table:
    def __init__(self, names: Iterable[str]):
        self.routes = _Servers(names)


class ChannelError(OSError):
    """The model server's socket failed or closed before the reply came."""


class Channel:
    """One blocking connection to the model server's socket, one request at a time (one per thread)."""

    def __init__(self, path: str, timeout: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = FrameReader()
        self.tags = itertools.count(1)

    def call(self, request_id: str, routed: str, body: bytes) -> tuple[int, str | None, bytes]:
        """Status, Retry-After and body of the model server's reply to ``body``."""
        tag = next(self.tags) & 0xFFFFFFFF
        self.sock.sendmsg([request_head(tag, request_id, routed, len(body)), body])
        while True:
            data = self.sock.recv(READ_SIZE)
            if not data:
                raise ChannelError("model server closed the channel")
            for frame in self.reader.feed(data):
                if frame.kind == REPLY and frame.tag == tag:
                    return frame.status, frame.meta.decode("ascii") or None, frame.body

    def close(self) -> None:
        self.sock.close()


class RunApp:
    """The WSGI app: ``POST /run`` forwarded to the model server at ``socket_path``."""

    def __init__(self, socket_path: str, signature: str = "dummy", timeout: float = REQUEST_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = timeout
        self.router = Router(_Table([signature]), Envelope("bench"), admission=None, response_format="")
        self.signature = signature
        self._local = threading.local()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request_id = requestid.accept(environ.get(requestid.ENVIRON_KEY))
        token = requestid.bind(request_id)  # error bodies carry it
        try:
            if environ.get("PATH_INFO") != "/run":
                raise NotFound("only POST /run is served here")
            if environ.get("REQUEST_METHOD") != "POST":
                raise MethodNotAllowed("use POST /run")
            status, body, headers = self.run(_read_body(environ), request_id)
        except ServingError as exc:
            status, body, headers = exc.status, jsonutil.dumps_bytes(exc.to_body()), list(exc.headers().items())
        finally:
            requestid.unbind(token)
        start_response(_STATUS_LINES.get(status, f"{status} Unknown"),
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        (requestid.HEADER, request_id), *headers])
        return [body]

    def run(self, raw: bytes, request_id: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        routed = self.router.signature_in(raw)
        if routed != self.signature:
            raise UnknownSignature(f"Bad signature {routed!r}. Available signatures/servers: {[self.signature]}")
        status, retry_after, data = self._forward(request_id, routed, raw)
        if status == MISROUTED:  # the body's own SIGNATURE is another one (the server parsed it)
            self._check_signature(raw)
        if status == 200:
            try:
                return 200, self.router.envelope.wrap(data), []
            except ValueError:
                raise ServerDied("model server sent an answer that is not a JSON object") from None
        if not data.startswith(b"{"):
            raise ServerDied(f"model server answered HTTP {status} without a JSON body")
        return status, data, [("Retry-After", retry_after)] if retry_after else []

    def _check_signature(self, raw: bytes) -> None:
        signature = Router.signature_of(jsonbody.loads_object(raw))
        if signature != self.signature:
            raise UnknownSignature(f"Bad signature {signature!r}. Available signatures/servers: {[self.signature]}")

    def _forward(self, request_id: str, routed: str, raw: bytes) -> tuple[int, str | None, bytes]:
        """One round trip on this thread's connection; a broken one is replaced once."""
        for attempt in (1, 2):
            channel = getattr(self._local, "channel", None)
            try:
                if channel is None:
                    channel = self._local.channel = Channel(self.socket_path, self.timeout)
                return channel.call(request_id, routed, raw)
            except OSError as exc:  # ChannelError, a timeout, a refused or reset connection
                if channel is not None:
                    channel.close()
                self._local.channel = None
                if attempt == 2 or isinstance(exc, TimeoutError):
                    logger.warning("Channel to %s failed: %s", self.socket_path, exc)
                    raise ServerDied(f"model server channel failed: {type(exc).__name__}") from None
        raise AssertionError("unreachable")


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("Content-Length is not a number") from None
    if length > MAX_BODY:
        raise PayloadTooLarge(f"request body larger than the limit of {MAX_BODY} bytes")
    stream = environ["wsgi.input"]
    return stream.read(length) if length else stream.read()


def create_app(socket_path: str | None = None, signature: str | None = None) -> RunApp:
    """The app for ``socket_path`` (default: ``$BENCH_FRONT_SOCKET``); granian calls it with no argument."""
    path = socket_path or os.environ.get(SOCKET_ENV)
    if not path:
        raise RuntimeError(f"no model server socket: pass one or set {SOCKET_ENV}")
    return RunApp(path, signature or os.environ.get(SIGNATURE_ENV, "dummy"))


def main() -> None:
    parser = argparse.ArgumentParser(description="the gateway's /run as a WSGI app under waitress")
    parser.add_argument("--socket", required=True, help="the model server's Unix socket")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--signature", default="dummy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d front_wsgi %(levelname)s %(message)s")
    import waitress

    # The old gateway's waitress settings: 1,000 connections at most, a deep accept backlog.
    server = waitress.create_server(create_app(args.socket, args.signature), host="127.0.0.1", port=args.port,
                                    threads=args.threads, connection_limit=1000, backlog=4096, ident=None)
    server.run()


if __name__ == "__main__":
    main()
