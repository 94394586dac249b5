"""The supervisor's decisions on a fake clock: restart backoff, load failures, startup timeouts,
health probes, blue-green reloads and recycles. No process is started and nothing sleeps: each
child is a fake process whose exit the test decides, and time is what the test says it is."""

from __future__ import annotations

import random
from types import MappingProxyType

import pytest

from basic_inference_server import exitcodes
from basic_inference_server.config import EndpointConfig, GatewayConfig
from basic_inference_server.gateway.supervision import probes as probes_module
from basic_inference_server.gateway.supervision.handle import (
    FAILED,
    READY,
    RESTARTING,
    STARTING,
    STOPPED,
    STOPPING,
    ChildHandle,
)
from basic_inference_server.gateway.supervision.ports import PortAllocator, port_is_free
from basic_inference_server.gateway.supervision.probes import HEALTH_FAILURES, Probe, Prober, judge
from basic_inference_server.gateway.supervision.reload import (
    MAX_REQUESTS,
    MAX_RSS,
    RECYCLE_PAUSE,
    Reloader,
    ReloadState,
)
from basic_inference_server.gateway.supervision.restarts import BACKOFF_MAX, STABLE_AFTER, RestartPolicy, backoff
from basic_inference_server.gateway.supervision.table import KILL_MARGIN, ChildTable

GRACE = 10.0


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeProc:
    """A child process whose exit the test decides."""

    pids = iter(range(7000, 8000))

    def __init__(self):
        self.pid = next(FakeProc.pids)
        self.returncode: int | None = None
        self.stdin = None
        self.signals: list[str] = []

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.signals.append("TERM")

    def kill(self) -> None:
        self.signals.append("KILL")
        self.returncode = -9


def endpoint(name: str = "m", **changes) -> EndpointConfig:
    values = dict(name=name, server_class=name, nr_workers=1, host="127.0.0.1", description="", disabled=False,
                  request_timeout=5.0, max_queue=1, server_threads=4, ping_interval=10.0, response_format=None,
                  max_batch_size=1, max_batch_wait_ms=5.0, nr_replicas=1, worker_config=MappingProxyType({}))
    values.update(changes)
    return EndpointConfig(**values)


def _free_block(count: int) -> int:
    """``count`` consecutive free ports below the ephemeral range (where a client connection
    could take one meanwhile) and below the integration tests' range (20000+): the allocator
    checks that a port is free when it gives it out."""
    for _ in range(200):
        base = random.randrange(10000, 20000 - count)
        if all(port_is_free("127.0.0.1", port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no block of free ports found")


class World:
    """A child table on a fake clock, with the policy, the reloader and the probes that act on it."""

    def __init__(self, *endpoints: EndpointConfig, ports: int = 8):
        self.clock = FakeClock()
        first_port = _free_block(ports)
        config = GatewayConfig(endpoints=endpoints, startup_timeout=30.0, shutdown_grace=GRACE)
        self.table = ChildTable(config, clock=self.clock)
        self.ports = PortAllocator(first_port, first_port + ports - 1)
        self.policy = RestartPolicy(self.table, self.ports)
        self.reloader = Reloader(self.table, self.ports)
        self.prober = Prober(self.table, threads=1)

    def child(self, name: str = "m", state=READY, started: float | None = None) -> ChildHandle:
        """A running child of endpoint ``name``, as the supervisor leaves it after a spawn."""
        handle = ChildHandle(endpoint=self.table.config.endpoint(name), port=self.ports.allocate(name, "127.0.0.1"),
                             state=state, proc=FakeProc())
        handle.started_at = self.clock.now if started is None else started
        handle.ready_at = handle.started_at if state is READY else None
        self.table.add(handle)
        return handle

    def spawn(self, handle: ChildHandle) -> None:
        """What the supervisor's spawn does to a handle (a new process, STARTING)."""
        handle.proc, handle.started_at, handle.kill_at = FakeProc(), self.clock.now, None
        self.table.transition(handle, STARTING, "spawned")

    def step(self, handle: ChildHandle, detail: str | None = "") -> bool:
        """One tick of the loop for ``handle`` (``detail``: what its error file said)."""
        return self.policy.step(handle, self.clock.now, detail)

    def tick(self) -> list[ChildHandle]:
        """One tick of the loop for the reloader and every child; those to spawn are spawned."""
        now = self.clock.now
        self.reloader.step(now)
        watched = list(self.table.handles.values()) + self.reloader.handles()
        spawned = [h for h in watched if self.policy.step(h, now, "")]
        for handle in spawned:
            self.spawn(handle)
        return spawned


@pytest.fixture
def world():
    made: list[World] = []

    def make(*endpoints, **options) -> World:
        made.append(World(*(endpoints or (endpoint(),)), **options))
        return made[-1]

    yield make
    for w in made:
        w.prober.close()


# -- restarts ------------------------------------------------------------------------------------
def test_backoff_doubles_to_thirty_seconds():
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_crashing_child_is_restarted_after_a_doubling_backoff(world):
    w = world()
    handle = w.child()
    delays = []
    for _ in range(7):
        handle.proc.returncode = 1
        assert w.step(handle) is False and handle.state is RESTARTING
        assert handle.error == "exited with code 1"
        crashed = w.clock.now
        w.clock.now = handle.restart_at - 0.001
        assert w.step(handle) is False  # not before its time
        w.clock.now = handle.restart_at
        assert w.step(handle) is True  # now: the loop spawns it
        delays.append(round(handle.restart_at - crashed, 3))
        w.spawn(handle)
        w.table.transition(handle, READY)
    assert delays == [1, 2, 4, 8, 16, BACKOFF_MAX, BACKOFF_MAX]
    assert handle.restarts == 7


def test_a_minute_ready_starts_the_backoff_again_from_one_second(world):
    w = world()
    handle = w.child()
    handle.failures = 5
    w.clock.now += STABLE_AFTER - 1
    w.step(handle)
    assert handle.failures == 5  # not yet
    w.clock.now += 2
    w.step(handle)
    assert handle.failures == 0
    handle.proc.returncode = 1
    w.step(handle)
    assert handle.restart_at - w.clock.now == 1


@pytest.mark.parametrize("code", [exitcodes.LOAD_FAILED, exitcodes.CONFIG_ERROR])
def test_a_server_that_cannot_load_is_failed_and_never_restarted(world, code):
    w = world()
    handle = w.child(state=STARTING)
    handle.proc.returncode = code
    assert w.step(handle, "m: _load_model failed: OSError: weights.bin not found") is False
    assert handle.state is FAILED and "weights.bin not found" in handle.error and handle.restarts == 0
    w.clock.now += 3600
    assert w.step(handle) is False and handle.state is FAILED


def test_an_exit_seen_before_its_error_file_is_decided_at_the_next_tick(world):
    w = world()
    handle = w.child(state=STARTING)
    handle.proc.returncode = exitcodes.LOAD_FAILED
    assert w.step(handle, None) is False and handle.state is STARTING  # exited after the tick's first look
    w.step(handle, "m: ImportError: no numpy")
    assert handle.state is FAILED and "no numpy" in handle.error


def test_a_taken_port_is_retried_on_another_at_once(world):
    w = world()
    handle = w.child(state=STARTING)
    taken = handle.port
    handle.proc.returncode = exitcodes.BIND_FAILED
    assert w.step(handle) is True and handle.port != taken and handle.bind_retries == 1


def test_a_server_not_ready_within_startup_timeout_is_failed_and_stopped(world):
    w = world()
    handle = w.child(state=STARTING)
    w.clock.now += 30
    w.step(handle)
    assert handle.state is STARTING
    w.clock.now += 0.1
    w.step(handle)
    assert handle.state is FAILED and "STARTUP_TIMEOUT=30s" in handle.error and handle.proc.signals == ["TERM"]
    assert handle.kill_at == w.clock.now + GRACE + KILL_MARGIN
    w.clock.now = handle.kill_at
    w.step(handle)
    assert handle.proc.signals == ["TERM", "KILL"]  # it ignored SIGTERM


def test_a_support_process_alive_for_a_second_is_ready(world):
    w = world(endpoint("helper", host="NO_HOST"))
    handle = ChildHandle(endpoint=w.table.config.endpoint("helper"), port=None, state=STARTING, proc=FakeProc())
    handle.started_at = w.clock.now
    w.table.add(handle)
    w.clock.now += 0.5
    w.step(handle)
    assert handle.state is STARTING
    w.clock.now += 0.5
    w.step(handle)
    assert handle.state is READY


# -- health probes -------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "progressed", "verdict"), [
    (200, False, Probe.HEALTHY),
    (None, True, Probe.BUSY),  # no answer in time, but requests answered since the last probe
    (None, False, Probe.FAILED),  # nothing at all: hung
    (503, True, Probe.FAILED),  # the server says so itself (its workers stuck, or draining)
])
def test_a_probes_verdict(status, progressed, verdict):
    assert judge(status, progressed) is verdict


def probe(w: World, handle: ChildHandle, status: int | None, answers: int = 0) -> None:
    handle.progress += answers  # what the event loop counts as answers come from the server
    w.prober.health = lambda h, timeout=1.0: (status, {"workers": {}} if status == 200 else {})
    w.prober.probe(handle, handle.proc)


@pytest.fixture
def no_usage(monkeypatch):
    monkeypatch.setattr(probes_module, "process_tree_usage", lambda pid: (1 << 20, 0.0))


def test_a_server_that_answers_requests_is_not_recycled_for_a_silent_health(world, no_usage):
    w = world()
    handle = w.child()
    for _ in range(HEALTH_FAILURES * 3):
        probe(w, handle, None, answers=2)
        w.step(handle)
    assert handle.health_failures == 0 and handle.state is READY and handle.routable


def test_a_server_that_answers_nothing_is_recycled(world, no_usage):
    w = world()
    handle = w.child()
    probe(w, handle, None, answers=1)  # busy for a while...
    for _ in range(HEALTH_FAILURES):  # ...then nothing more comes from it
        probe(w, handle, None)
    assert handle.health_failures == HEALTH_FAILURES and not handle.routable
    w.step(handle)
    assert handle.state is RESTARTING and handle.proc.signals == ["TERM"] and "unhealthy" in handle.error


def test_stuck_workers_said_by_the_server_count_even_while_others_answer(world, no_usage):
    w = world()
    handle = w.child()
    for _ in range(HEALTH_FAILURES):
        probe(w, handle, 503, answers=5)
    assert handle.health_failures == HEALTH_FAILURES


def test_a_starting_server_that_answers_its_probe_is_ready(world, no_usage):
    w = world()
    handle = w.child(state=STARTING)
    w.clock.now += 0.7
    probe(w, handle, 200)
    assert handle.state is READY and handle.ready_at == w.clock.now
    assert handle.probe_due == w.clock.now + probes_module.HEALTH_INTERVAL


# -- blue-green reloads --------------------------------------------------------------------------
def test_a_reload_starts_a_new_generation_and_switches_once_it_is_ready(world):
    w = world()
    old = w.child()
    old.inflight.enter()  # a request on the old generation
    reload = w.reloader.request("m", endpoint())
    assert w.tick() == [reload.new] and reload.new.state is STARTING and reload.new.port != old.port
    new = reload.new
    assert w.table.handles["m"] is old  # still routed to the old one until the new one is READY
    w.table.transition(new, READY)
    w.tick()
    assert w.table.handles["m"] is new and reload.state is ReloadState.DONE and new.generation == 2
    assert old.state is READY and old.proc.signals == []  # it finishes the request it holds first
    old.inflight.exit()
    w.tick()
    assert old.state is STOPPING and old.proc.signals == ["TERM"]
    old.proc.returncode = 0
    w.tick()
    assert old.state is STOPPED and w.reloader.retiring == []


def test_an_old_generation_holding_a_request_too_long_is_stopped_anyway(world):
    w = world()
    old = w.child()
    old.inflight.enter()
    reload = w.reloader.request("m", endpoint())
    w.tick()
    w.table.transition(reload.new, READY)
    w.tick()
    w.clock.now += 5.0 + 5.0  # REQUEST_TIMEOUT and RETIRE_MARGIN: its client has had its answer
    w.tick()
    assert old.state is READY
    w.clock.now += 0.1
    w.tick()
    assert old.state is STOPPING


def test_a_new_generation_that_fails_leaves_the_old_one_serving(world):
    w = world()
    old = w.child()
    reload = w.reloader.request("m", endpoint())
    w.tick()
    new = reload.new
    new.proc.returncode = exitcodes.LOAD_FAILED
    w.policy.step(new, w.clock.now, "m: _load_model failed: bad weights")
    w.tick()
    assert reload.state is ReloadState.FAILED and "bad weights" in reload.error
    assert w.table.handles["m"] is old and old.state is READY


def test_with_no_port_left_a_replica_is_replaced_in_place(world):
    w = world(ports=1)
    old = w.child()
    w.clock.now += 60  # it has been running a while
    reload = w.reloader.request("m", endpoint())
    w.tick()
    assert reload.in_place and "no free port" in reload.in_place
    assert old.state is RESTARTING and old.proc.signals == ["TERM"] and reload.new is old
    old.proc.returncode = 0
    assert w.tick() == [old] and old.generation == 2  # started again, with the new code, on its port
    w.table.transition(old, READY)
    w.tick()
    assert reload.state is ReloadState.DONE


# -- recycles ------------------------------------------------------------------------------------
def test_max_requests_recycles_a_server_blue_green(world):
    w = world(endpoint(max_requests=100))
    old = w.child()
    old.recycle_after = 100
    old.served = 99
    w.tick()
    assert "m" not in w.reloader.active
    old.served = 100
    w.tick()  # decided...
    w.tick()  # ...and begun
    recycle = w.reloader.active["m"]
    new = recycle.new
    assert recycle.reason == MAX_REQUESTS and new is not None
    w.table.transition(new, READY)
    w.tick()
    assert w.table.handles["m"] is new and w.table.recycles == {("m", MAX_REQUESTS): 1}
    assert w.table.routes.routes.recycles == {("m", MAX_REQUESTS): 1}


def test_a_recycle_that_fails_is_not_tried_again_for_a_while(world):
    w = world(endpoint(max_rss_mb=100))
    old = w.child()
    old.rss_bytes = 200 << 20
    w.tick()
    w.tick()
    recycle = w.reloader.active["m"]
    assert recycle.reason == MAX_RSS
    recycle.new.proc.returncode = exitcodes.LOAD_FAILED
    w.policy.step(recycle.new, w.clock.now, "m: no memory")
    w.tick()
    assert "m" not in w.reloader.active and old.recycle_paused_until == w.clock.now + RECYCLE_PAUSE
    w.clock.now += RECYCLE_PAUSE - 1
    w.tick()
    assert "m" not in w.reloader.active
    w.clock.now += 1
    w.tick()
    assert w.reloader.active["m"].reason == MAX_RSS
