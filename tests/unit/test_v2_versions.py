"""gateway/routing/v2path.py: a V2 model's versions when its replicas are at different generations
(one reloaded or recycled before the other)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from basic_inference_server.errors import NotFound
from basic_inference_server.gateway.routing.router import Router
from basic_inference_server.gateway.routing.routes import Routes, RouteTable
from basic_inference_server.gateway.routing.v2path import infer_target, route_model, served_versions
from basic_inference_server.gateway.supervision.handle import READY, STARTING, ChildHandle

ENDPOINT = SimpleNamespace(name="m", is_support=False)


def replica(generation: int, state=READY, busy: int = 0) -> ChildHandle:
    handle = ChildHandle(endpoint=ENDPOINT, port=None, state=state, generation=generation)
    for _ in range(busy):
        handle.inflight.enter()
    return handle


def router_of(*handles: ChildHandle) -> Router:
    for number, handle in enumerate(handles):
        handle.replica = number
    table = RouteTable()
    table.routes = Routes.build((), list(handles))
    return Router(table, envelope=None, admission=None, response_format="nested")


def test_a_version_routes_to_a_replica_of_that_generation():
    old, newer_busy, new = replica(2), replica(3, busy=5), replica(3, busy=0)
    router = router_of(old, newer_busy, new)
    assert all(route_model(router, "m", "3") is new for _ in range(4))  # the least busy of generation 3
    assert route_model(router, "m", "2") is old
    picked = [id(route_model(router, "m", None)) for _ in range(4)]  # no version: the least busy, in turn
    assert sorted(set(picked)) == sorted({id(old), id(new)})
    assert served_versions(router, "m") == ["2", "3"]


def test_a_replica_failing_its_health_probes_is_not_routed_to():
    healthy, failing = replica(3, busy=2), replica(3)
    failing.health_failures = 1
    router = router_of(failing, healthy)
    assert all(route_model(router, "m", "3") is healthy for _ in range(4))


def test_a_version_no_ready_replica_has_is_a_404_listing_the_served_ones():
    router = router_of(replica(2), replica(4, state=STARTING))
    with pytest.raises(NotFound, match=r"no version '4': version\(s\) 2 served"):
        route_model(router, "m", "4")


def test_an_infer_path_is_read_part_by_part_after_percent_decoding():
    assert infer_target("/v2/models/m/%69nfer") == ("m", None)
    assert infer_target("/v2/models/a%2Fb/versions/%32/infer") == ("a/b", "2")  # %2F stays in the name
    with pytest.raises(NotFound):
        infer_target("/v2/models/m/infer/more")
