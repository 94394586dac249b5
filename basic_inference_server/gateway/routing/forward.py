"""Forward a request body to a model server over its pooled keep-alive connections.

The body is sent as received (the server drops ``SIGNATURE`` itself): the gateway reads only
what it needs of it and never re-encodes it. Every call has a connect and a read timeout;
transport failures become 502/503/504 answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...errors import RequestTimeout, ServerDied, ServingError, Unavailable
from ..supervision.handle import READY, ChildHandle
from .upstream import ConnectFailed, ConnectionLost, ReadTimedOut, TransportError

logger = logging.getLogger(__name__)

# The server answers 504 itself at REQUEST_TIMEOUT; the gateway waits a little longer than that.
READ_MARGIN = 5.0
_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Reply:
    status: int
    data: bytes
    retry_after: str | None = None


def forward(handle: ChildHandle, path: str, body: bytes, headers: dict[str, str] | None = None) -> Reply:
    """POST ``body`` to ``path`` on the handle's HTTP port; raise a ServingError on transport failure."""
    upstream = handle.http
    if upstream is None:
        raise Unavailable(f"endpoint {handle.name!r} is not running")
    try:
        reply = upstream.request("POST", path, body, headers or _JSON_HEADERS,
                                 timeout=handle.endpoint.request_timeout + READ_MARGIN)
    except (ConnectFailed, ReadTimedOut, ConnectionLost) as exc:
        raise transport_error(handle, exc) from None
    return Reply(reply.status, reply.data, reply.headers.get("retry-after"))


def transport_error(handle: ChildHandle, error: TransportError) -> ServingError:
    """What the client is told when a request to a model server got no answer (HTTP or channel)."""
    name = handle.name
    if not isinstance(error, (ConnectFailed, ReadTimedOut, ConnectionLost)):  # a remote server's refusal
        return ServerDied(str(error))
    if isinstance(error, ConnectFailed):
        if handle.state != READY:
            return Unavailable(f"endpoint {name!r} is {handle.state}")
        logger.warning("%s unreachable: %s", name, error)
        return ServerDied(f"model server {name!r} is not reachable")
    if isinstance(error, ReadTimedOut):
        return RequestTimeout(f"request did not finish within REQUEST_TIMEOUT={handle.endpoint.request_timeout:g}s")
    logger.warning("%s: %s", name, error)
    return ServerDied(f"model server {name!r} closed the connection before answering")
