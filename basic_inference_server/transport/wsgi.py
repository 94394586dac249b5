"""Run a WSGI app (the gateway's Flask routes) for a request the HTTP front has read whole.

The front calls :func:`call_wsgi` on a worker thread and writes the answer from its loop; the
app's ``close()`` is handed back so that it runs only after the answer is on its way (the
``/shutdown`` route stops the gateway from there).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from .httpmsg import HttpRequest


@dataclass
class WsgiCall:
    status: str
    headers: list[tuple[str, str]]
    body: bytes
    has_length: bool
    keep_alive: bool
    close: Callable[[], None] | None


def wsgi_environ(request: HttpRequest, server_host: str, server_port: int) -> dict[str, Any]:
    path, _, query = request.target.partition(b"?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": server_host,
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": f"HTTP/{request.version}",
        "REMOTE_ADDR": request.remote[0],
        "REMOTE_PORT": str(request.remote[1]),
        "CONTENT_LENGTH": str(len(request.body)),  # chunked bodies arrive decoded, whole
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue
        text = value.decode("latin-1")
        if key == "CONTENT_TYPE":
            environ[key] = text
            continue
        key = "HTTP_" + key
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ


def call_wsgi(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> WsgiCall:
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return _no_write

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    except BaseException:
        _close(result)
        raise
    status, headers = started
    lower = {name.lower(): value for name, value in headers}
    keep_alive = lower.get("connection", "").lower() != "close"
    headers = [(n, v) for n, v in headers if n.lower() != "connection"]
    return WsgiCall(status, headers, body, "content-length" in lower, keep_alive, getattr(result, "close", None))


def _close(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the write() callable of WSGI is not supported; return the body instead")
