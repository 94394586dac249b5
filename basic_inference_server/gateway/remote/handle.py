"""One address of a remote endpoint (a model server the gateway did not start) and its state.

States (:class:`RemoteState`): PROBING (found, not yet answered) -> READY; READY -> DOWN (a probe
or a request failed to reach it) -> READY (a probe succeeded again); READY -> DRAINING (it said it
is shutting down) -> READY or gone. An address that DNS no longer returns leaves the table.
Only :meth:`RemoteEndpoints._transition <basic_inference_server.gateway.remote.pool.RemoteEndpoints>`
changes a state.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from ...config import EndpointConfig
from ...httpserve import InFlight
from ..routing.upstream import Upstream


def address_of(host: str, port: int) -> str:
    """``host:port`` as written in a URL or a Host header (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RemoteState(str, Enum):
    PROBING = "PROBING"
    READY = "READY"
    DOWN = "DOWN"
    DRAINING = "DRAINING"

    __str__ = str.__str__
    __format__ = str.__format__


@dataclass(eq=False)
class RemoteHandle:
    """One model server of a remote endpoint, at ``host:port`` (an address ``source`` resolved to)."""

    is_remote: ClassVar[bool] = True
    is_support: ClassVar[bool] = False
    pid: ClassVar[None] = None
    generation: ClassVar[int] = 1

    endpoint: EndpointConfig
    host: str
    port: int
    source: str  # the URL of URLS it came from
    state: RemoteState = RemoteState.PROBING  # changed only by RemoteEndpoints._transition
    error: str | None = None
    since: float = 0.0  # time.monotonic() of the last change of state
    inflight: InFlight = field(default_factory=InFlight)  # requests being forwarded to it
    served: int = 0  # answers relayed from it (counted by the event loop alone)
    progress: int = 0  # answers and stream items that came from it (as a child's; its probes do not read it)
    failed: int = 0  # requests that could not reach it (refused, lost)
    health_failures: int = 0  # consecutive failed probes
    workers: dict[str, Any] = field(default_factory=dict)  # from its last /health
    http: Upstream | None = field(default=None, repr=False)  # probes and admin routes
    tls: ssl.SSLContext | None = field(default=None, repr=False)  # its URL is https://
    report: Callable[[RemoteHandle, str, bool], None] | None = field(default=None, repr=False)
    # Fixed for the handle's life (an endpoint whose URLS change scheme gets new handles), made once:
    address: str = field(init=False)  # host:port
    server_name: str = field(init=False)  # the host of its URL: the name its TLS certificate must show
    key: str = field(init=False)  # what the gateway's clients are kept by: one pool per address (and name)

    def __post_init__(self) -> None:
        self.address = address_of(self.host, self.port)
        self.server_name = urllib.parse.urlsplit(self.source).hostname or self.host
        url = self.endpoint.url_of(self.host, self.port)
        self.key = f"{url}#{self.server_name}" if self.endpoint.tls else url

    @property
    def name(self) -> str:
        return f"{self.endpoint.name}@{self.address}"

    @property
    def capacity(self) -> int:
        return self.endpoint.capacity()

    @property
    def routable(self) -> bool:
        return self.state is RemoteState.READY
