"""gateway/routing/v2path.py: a V2 model's versions when its replicas are at different generations
(one reloaded or recycled before the other)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from basic_inference_server.errors import NotFound
from basic_inference_server.gateway.routing.v2path import route_model, served_versions
from basic_inference_server.gateway.supervision.handle import READY, STARTING


def replica(generation: int, state=READY, busy: int = 0) -> SimpleNamespace:
    return SimpleNamespace(generation=generation, state=state, health_failures=0,
                           inflight=SimpleNamespace(count=busy))


def router_of(*handles) -> SimpleNamespace:
    return SimpleNamespace(route_to=lambda name: handles[0],
                           table=SimpleNamespace(routes=SimpleNamespace(servers={"m": list(handles)})))


def test_a_version_routes_to_a_replica_of_that_generation():
    old, new, newer_busy = replica(2), replica(3, busy=0), replica(3, busy=5)
    router = router_of(old, newer_busy, new)
    assert route_model(router, "m", "3") is new  # the least busy of generation 3
    assert route_model(router, "m", "2") is old
    assert route_model(router, "m", None) is old  # no version: whatever route_to picks
    assert served_versions(router, "m") == ["2", "3"]


def test_a_version_no_ready_replica_has_is_a_404_listing_the_served_ones():
    router = router_of(replica(2), replica(4, state=STARTING))
    with pytest.raises(NotFound, match=r"no version '4': version\(s\) 2 served"):
        route_model(router, "m", "4")
