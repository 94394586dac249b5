"""Forward a request body to a model server over its pooled keep-alive connections.

The body is sent as received (the server drops ``SIGNATURE`` itself), so the gateway parses
it once, for routing, and never re-encodes it. Every call has a connect and a read timeout;
transport failures become 502/503/504 answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import RequestTimeout, ServerDied, Unavailable
from .supervisor import READY, ChildHandle
from .upstream import ConnectFailed, ConnectionLost, ReadTimedOut

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
    """POST ``body`` to ``path`` on the handle's server; raise a ServingError on transport failure."""
    upstream = handle.http
    if upstream is None:
        raise Unavailable(f"endpoint {handle.name!r} is not running")
    try:
        reply = upstream.request("POST", path, body, headers or _JSON_HEADERS,
                                 timeout=handle.endpoint.request_timeout + READ_MARGIN)
    except ConnectFailed as exc:
        if handle.state != READY:
            raise Unavailable(f"endpoint {handle.name!r} is {handle.state}") from None
        logger.warning("%s unreachable: %s", handle.name, exc)
        raise ServerDied(f"model server {handle.name!r} is not reachable") from None
    except ReadTimedOut:
        raise RequestTimeout(f"model server {handle.name!r} did not answer in time") from None
    except ConnectionLost as exc:
        logger.warning("%s: %s", handle.name, exc)
        raise ServerDied(f"model server {handle.name!r} closed the connection before answering") from None
    return Reply(reply.status, reply.data, reply.headers.get("retry-after"))
