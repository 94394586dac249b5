"""The router's view of who serves what: endpoint name -> its model servers, as a snapshot.

Two writers publish into the :class:`RouteTable`: the supervisor's table of children (the
children, the configured endpoints and the recycles done, whenever they change) and the remote
endpoints (the addresses of ``URLS``, whenever they change). Each
publication builds a new :class:`Routes` from the latest of both and puts it in place in one
assignment; request threads and the event loop read whichever snapshot is current, without a
lock and without reaching into either writer.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ...config import EndpointConfig
from ...pipeconfig import PipelineConfig

if TYPE_CHECKING:
    from ..remote.handle import RemoteHandle
    from ..supervision.handle import ChildHandle


@dataclass(frozen=True)
class Routes:
    """What the router knows: the started model servers by endpoint, and every configured endpoint."""

    servers: Mapping[str, tuple[ChildHandle | RemoteHandle, ...]] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: Mapping[str, EndpointConfig] = field(default_factory=lambda: MappingProxyType({}))
    children: tuple[ChildHandle, ...] = ()  # every child of this gateway, support processes too
    remote: tuple[RemoteHandle, ...] = ()  # every address of the remote endpoints
    recycles: Mapping[tuple[str, str], int] = field(default_factory=lambda: MappingProxyType({}))  # (name, reason)

    @classmethod
    def build(cls, endpoints: tuple[EndpointConfig, ...], handles: list[ChildHandle],
              remote: Mapping[str, tuple[RemoteHandle, ...]] | None = None,
              recycles: Mapping[tuple[str, str], int] | None = None) -> Routes:
        servers: dict[str, list[ChildHandle | RemoteHandle]] = {}
        for handle in sorted((h for h in handles if not h.is_support), key=lambda h: h.replica):
            servers.setdefault(handle.endpoint.name, []).append(handle)
        for name, addresses in (remote or {}).items():
            if addresses:
                servers[name] = list(addresses)
        return cls(MappingProxyType({name: tuple(replicas) for name, replicas in servers.items()}),
                   MappingProxyType({e.name: e for e in endpoints}), tuple(handles),
                   tuple(h for addresses in (remote or {}).values() for h in addresses),
                   MappingProxyType(dict(recycles or {})))


class RouteTable:
    """The current :class:`Routes`, rebuilt whole at each publication; readers take it as it is."""

    def __init__(self) -> None:
        self.routes = Routes()
        self.pipelines: Mapping[str, PipelineConfig] = MappingProxyType({})  # replaced whole at start and reloads
        self._lock = threading.Lock()
        self._endpoints: tuple[EndpointConfig, ...] = ()
        self._handles: list[ChildHandle] = []
        self._remote: Mapping[str, tuple[RemoteHandle, ...]] = {}
        self._recycles: Mapping[tuple[str, str], int] = {}

    def publish_local(self, endpoints: tuple[EndpointConfig, ...], handles: list[ChildHandle],
                      recycles: Mapping[tuple[str, str], int] | None = None) -> None:
        """The supervisor's children (and the configuration, and the recycles done) changed."""
        with self._lock:
            self._endpoints, self._handles = endpoints, handles
            if recycles is not None:
                self._recycles = dict(recycles)
            self.routes = Routes.build(endpoints, handles, self._remote, self._recycles)

    def publish_pipelines(self, pipelines: tuple[PipelineConfig, ...]) -> None:
        """The pipelines of the configuration in force."""
        self.pipelines = MappingProxyType({pipeline.name: pipeline for pipeline in pipelines})

    def publish_remote(self, remote: Mapping[str, tuple[RemoteHandle, ...]]) -> None:
        """The addresses of the remote endpoints (endpoint name -> its model servers) changed."""
        with self._lock:
            self._remote = dict(remote)
            self.routes = Routes.build(self._endpoints, self._handles, self._remote, self._recycles)
