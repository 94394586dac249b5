"""How the supervisor judges a model server's health probes: a server busy with a large body, whose
/health is slow to answer while its requests are answered, is not recycled; a hung one is."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from basic_inference_server.config import EndpointConfig, GatewayConfig
from basic_inference_server.gateway.supervision import supervisor as supervision
from basic_inference_server.gateway.supervision.handle import READY, RESTARTING, ChildHandle
from basic_inference_server.gateway.supervision.liveness import Probe, judge
from basic_inference_server.gateway.supervision.supervisor import HEALTH_FAILURES, Supervisor


@pytest.mark.parametrize(("status", "progressed", "verdict"), [
    (200, False, Probe.HEALTHY),
    (None, True, Probe.BUSY),  # no answer in time, but requests answered since the last probe
    (None, False, Probe.FAILED),  # nothing at all: hung
    (503, True, Probe.FAILED),  # the server says so itself (its workers stuck, or draining)
])
def test_a_probes_verdict(status, progressed, verdict):
    assert judge(status, progressed) is verdict


class _Proc:
    pid = 4242

    def poll(self):
        return None

    def terminate(self):
        self.terminated = True


@pytest.fixture
def supervised(tmp_path, monkeypatch):
    monkeypatch.setattr(supervision, "process_tree_usage", lambda pid: (1 << 20, 0.0))
    sup = Supervisor(GatewayConfig(endpoints=()), tmp_path, tmp_path, "h0000", None)
    endpoint = EndpointConfig(name="busy", server_class="busy", nr_workers=1, host="127.0.0.1", description="",
                              disabled=False, request_timeout=5.0, max_queue=1, server_threads=4, ping_interval=10.0,
                              response_format=None, max_batch_size=1, max_batch_wait_ms=5.0, nr_replicas=1,
                              worker_config=MappingProxyType({}))
    handle = sup.handles["busy"] = ChildHandle(endpoint=endpoint, port=1, state=READY, proc=_Proc())
    yield sup, handle
    sup._probes.shutdown()


def probe(sup: Supervisor, handle: ChildHandle, status: int | None, answers: int = 0) -> None:
    handle.progress += answers  # what the event loop counts as answers come from the server
    sup.health = lambda h, timeout=1.0: (status, {"workers": {}} if status == 200 else {})
    sup._probe(handle, handle.proc)


def test_a_server_that_answers_requests_is_not_recycled_for_a_silent_health(supervised):
    sup, handle = supervised
    for _ in range(HEALTH_FAILURES * 3):
        probe(sup, handle, None, answers=2)
        sup._step(handle, 0.0, None)
    assert handle.health_failures == 0 and handle.state is READY and handle.routable


def test_a_server_that_answers_nothing_is_recycled(supervised):
    sup, handle = supervised
    probe(sup, handle, None, answers=1)  # busy for a while...
    for _ in range(HEALTH_FAILURES):  # ...then nothing more comes from it
        probe(sup, handle, None)
    assert handle.health_failures == HEALTH_FAILURES and not handle.routable
    sup._step(handle, 0.0, None)
    assert handle.state is RESTARTING and handle.proc.terminated


def test_stuck_workers_said_by_the_server_count_even_while_others_answer(supervised):
    sup, handle = supervised
    for _ in range(HEALTH_FAILURES):
        probe(sup, handle, 503, answers=5)
    assert handle.health_failures == HEALTH_FAILURES
