"""What a reloaded configuration changes (gateway/reconfigure.plan), and the memory budget of a
blue-green replacement (supervision/reload)."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import MappingProxyType

import pytest

from basic_inference_server.config import EndpointConfig, GatewayConfig
from basic_inference_server.gateway import reconfigure
from basic_inference_server.gateway.observe.sysinfo import Memory
from basic_inference_server.gateway.supervision import reload
from basic_inference_server.gateway.supervision.handle import ChildHandle
from basic_inference_server.server.discovery import WorkerLocation


def endpoint(name: str, tmp_path, code: str = "v = 1\n", **changes) -> EndpointConfig:
    path = tmp_path / f"{name}.py"
    if not path.exists():
        path.write_text(code)
    values = dict(name=name, server_class=name, nr_workers=1, host="127.0.0.1", description="", disabled=False,
                  request_timeout=5.0, max_queue=1, server_threads=4, ping_interval=10.0, response_format=None,
                  max_batch_size=1, max_batch_wait_ms=5.0, nr_replicas=1, worker_config=MappingProxyType({}),
                  worker=WorkerLocation(path, f"endpoints.{name}", "XWorker"))
    values.update(changes)
    return EndpointConfig(**values)


def test_a_plan_names_what_was_added_removed_changed_and_left_alone(tmp_path):
    a, b, c = (endpoint(n, tmp_path) for n in ("a", "b", "c"))
    old = GatewayConfig(endpoints=(a, b, c))
    running = {e.name: e.code_hash() for e in (a, b, c)}
    (tmp_path / "c.py").write_text("v = 2\n")  # c's file changed on disk, its entry did not
    new = GatewayConfig(endpoints=(a, dataclasses.replace(b, nr_workers=3), c, endpoint("d", tmp_path)),
                        shutdown_grace=3.0)
    todo = reconfigure.plan(old, new, running)
    assert todo.added == ["d"] and todo.removed == [] and sorted(todo.changed) == ["b", "c"]
    assert todo.unchanged == ["a"] and todo.needs_restart == ["SHUTDOWN_GRACE"]
    assert reconfigure.plan(new, GatewayConfig(endpoints=(a,), shutdown_grace=3.0), {}).removed == ["b", "c", "d"]


def test_a_second_process_that_would_not_fit_in_memory_is_refused(monkeypatch):
    old = ChildHandle(endpoint=None, port=1)  # type: ignore[arg-type]
    monkeypatch.setattr(ChildHandle, "pid", property(lambda self: 4242))
    monkeypatch.setattr(reload, "process_tree_usage", lambda pid: (800 * 1048576, 1.0))
    monkeypatch.setattr(reload, "memory", lambda: Memory(4096 * 1048576, 900 * 1048576, "cgroup v2"))
    why = reload._memory_short(old)
    assert why is not None and "1000 MB needed" in why and "900 MB available" in why
    monkeypatch.setattr(reload, "memory", lambda: Memory(4096 * 1048576, 2048 * 1048576, "host"))
    assert reload._memory_short(old) is None


def test_waiting_for_children_ends_when_they_are_ready_or_cannot_become_so(tmp_path):
    from basic_inference_server.gateway.supervision.handle import FAILED, READY, RESTARTING, STARTING, STOPPED
    from basic_inference_server.gateway.supervision.supervisor import Supervisor

    supervisor = Supervisor(GatewayConfig(endpoints=(), startup_timeout=60), tmp_path, tmp_path, "h0000", None)
    try:
        ep = endpoint("a", tmp_path)
        handle = supervisor.handles["a"] = ChildHandle(endpoint=ep, port=None, state=READY)
        assert supervisor.wait_started(["a"]) == []
        began = time.monotonic()
        for state in (FAILED, STOPPED):  # answered at once, not after STARTUP_TIMEOUT (60 s + 10)
            handle.state = state
            assert supervisor.wait_started(["a"]) == ["a"]
        assert supervisor.wait_started(["gone"]) == ["gone"]  # removed meanwhile by another change
        assert time.monotonic() - began < 30
        handle.state = RESTARTING  # may still come up: waited for, and READY ends the wait
        timer = threading.Timer(0.3, lambda: setattr(handle, "state", READY))
        timer.start()
        assert supervisor.wait_started(["a"]) == []
        assert handle.state is READY
        handle.state = STARTING
        threading.Timer(0.3, lambda: setattr(handle, "state", FAILED)).start()
        assert supervisor.wait_started(["a"]) == ["a"]
    finally:
        supervisor.close()


def test_one_configuration_reload_at_a_time(tmp_path):
    from basic_inference_server.errors import Conflict
    from basic_inference_server.gateway.core import FlaskGateway

    (tmp_path / "config_gateway.txt").write_text('{"CONFIG_ENDPOINTS": {}}')
    gateway = FlaskGateway(app_root=tmp_path, run=False)
    try:
        assert gateway.reconfiguration._reloading.acquire(blocking=False)  # as a reload in progress holds it
        with pytest.raises(Conflict, match="a configuration reload is in progress"):
            gateway.reload_config()
        waiting = threading.Thread(target=gateway.reload_config, kwargs={"wait": True})  # SIGHUP's: after it
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive()
        gateway.reconfiguration._reloading.release()
        waiting.join(10)
        assert not waiting.is_alive()
        assert gateway.reload_config()["UNCHANGED"] == []  # free again
    finally:
        gateway.supervisor.close()
