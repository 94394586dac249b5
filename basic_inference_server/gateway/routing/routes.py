"""The router's view of the supervisor's table: endpoint name -> its model servers, as a snapshot.

The supervisor builds a new :class:`Routes` whenever a child is added and puts it in the
:class:`RouteTable` in one assignment; request threads and the event loop read whichever
snapshot is current, without a lock and without reaching into the supervisor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ...config import EndpointConfig

if TYPE_CHECKING:
    from ..supervision.handle import ChildHandle


@dataclass(frozen=True)
class Routes:
    """What the router knows: the started model servers by endpoint, and every configured endpoint."""

    servers: Mapping[str, tuple[ChildHandle, ...]] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: Mapping[str, EndpointConfig] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, endpoints: tuple[EndpointConfig, ...], handles: list[ChildHandle]) -> Routes:
        servers: dict[str, list[ChildHandle]] = {}
        for handle in sorted((h for h in handles if not h.is_support), key=lambda h: h.replica):
            servers.setdefault(handle.endpoint.name, []).append(handle)
        return cls(MappingProxyType({name: tuple(replicas) for name, replicas in servers.items()}),
                   MappingProxyType({e.name: e for e in endpoints}))


class RouteTable:
    """The current :class:`Routes`; the supervisor replaces it whole, readers take it as it is."""

    def __init__(self) -> None:
        self.routes = Routes()
