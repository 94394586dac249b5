"""Container memory (cgroup v1/v2), support metric parsing, and the intake's token rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from basic_inference_server.errors import BadRequest
from basic_inference_server.gateway.app import is_loopback
from basic_inference_server.gateway.observe import sysinfo
from basic_inference_server.gateway.support_data import SupportData, metrics_of

GB = 1024**3


def test_cgroup_v2_limit_and_usage(tmp_path):
    (tmp_path / "memory.max").write_text(f"{2 * GB}\n")
    (tmp_path / "memory.current").write_text(f"{GB}\n")
    (tmp_path / "memory.stat").write_text(f"anon 123\ninactive_file {GB // 4}\n")
    memory = sysinfo.cgroup_memory(tmp_path)
    assert memory == sysinfo.Memory(total=2 * GB, available=2 * GB - (GB - GB // 4), source="cgroup v2")


def test_cgroup_v2_without_limit_is_none(tmp_path):
    (tmp_path / "memory.max").write_text("max\n")
    assert sysinfo.cgroup_memory(tmp_path) is None


def test_cgroup_v1_limit_and_usage(tmp_path):
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{GB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{GB // 2}\n")
    (v1 / "memory.stat").write_text(f"total_inactive_file {GB // 8}\n")
    memory = sysinfo.cgroup_memory(tmp_path)
    assert memory == sysinfo.Memory(total=GB, available=GB - (GB // 2 - GB // 8), source="cgroup v1")


def test_cgroup_v1_unlimited_is_none(tmp_path):
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert sysinfo.cgroup_memory(tmp_path) is None


@pytest.mark.skipif(sysinfo.descendants(os.getpid()) is None, reason="no /proc/<pid>/task/<tid>/children here")
def test_descendants_reads_the_process_tree_as_psutil_does():
    """A child that started a grandchild (from a thread of its own): both are found, and they
    are what psutil finds by reading every process of the machine; the tree's RSS counts them."""
    script = ("import subprocess, sys, threading, time\n"
              "threading.Thread(target=lambda: subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']))"
              ".start()\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        root = psutil.Process(child.pid)
        for _ in range(200):
            if root.children():
                break
            time.sleep(0.02)
        expected = sorted(p.pid for p in root.children(recursive=True))
        assert len(expected) == 1
        assert sorted(sysinfo.descendants(child.pid)) == expected
        own_rss = root.memory_info().rss
        rss, _cpu = sysinfo.process_tree_usage(child.pid)
        assert rss > own_rss
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(5)
    assert sysinfo.descendants(child.pid) == []  # gone: nothing below it
    assert sysinfo.process_tree_usage(child.pid) is None


def test_memory_prefers_a_container_limit_below_the_host(tmp_path):
    (tmp_path / "memory.max").write_text(f"{GB}\n")
    (tmp_path / "memory.current").write_text(f"{GB // 2}\n")
    memory = sysinfo.memory(tmp_path)
    assert memory.source == "cgroup v2" and memory.total == GB and memory.available <= GB // 2
    assert sysinfo.memory(tmp_path / "absent").source == "host"


def test_metrics_nested_or_flat():
    assert metrics_of({"SIGNATURE": "s", "data": {"a": 1}}) == {"a": 1}
    assert metrics_of({"SIGNATURE": "s", "a": 1, "msg": "m"}) == {"a": 1, "msg": "m"}
    assert metrics_of({"SIGNATURE": "s", "TOKEN": "t", "a": 1}) == {"a": 1}
    with pytest.raises(BadRequest):
        metrics_of({"SIGNATURE": "s"})
    with pytest.raises(BadRequest):
        metrics_of({"SIGNATURE": "s", "data": {}})


def test_support_data_age_and_staleness(monkeypatch):
    store = SupportData()
    clock = [100.0]
    monkeypatch.setattr("basic_inference_server.gateway.support_data.time.monotonic", lambda: clock[0])
    store.store("mon", {"a": 1})
    clock[0] += 2.0
    view = store.view({"mon": 1.0, "silent": 1.0})
    assert view["mon"]["data"] == {"a": 1} and view["mon"]["age_s"] == 2.0 and view["mon"]["stale"] is False
    assert view["silent"] == {"data": None, "received": None, "age_s": None, "stale": True}
    clock[0] += 1.5
    assert store.view({"mon": 1.0})["mon"]["stale"] is True


@pytest.mark.parametrize("address, loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                                ("10.0.0.5", False), ("192.168.1.2", False), (None, False),
                                                ("garbage", False)])
def test_loopback_detection(address, loopback):
    assert is_loopback(address) is loopback


def test_intake_from_another_host_needs_the_admin_token(tmp_path):
    from basic_inference_server.gateway.app import create_gateway_app
    from basic_inference_server.gateway.core import FlaskGateway

    (tmp_path / "endpoints").mkdir()
    (tmp_path / "endpoints" / "mon.py").write_text("print('support')\n")
    config = {"ADMIN_TOKEN": "remote-token-123", "CONFIG_ENDPOINTS": {"mon": {"HOST": "NO_HOST"}}}
    gateway = FlaskGateway(config=config, app_root=tmp_path, run=False)
    client = create_gateway_app(gateway.parts()).test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    body = {"SIGNATURE": "mon", "cpu": 5}
    assert client.post("/support_update_status", json=body, environ_base=remote).status_code == 401
    assert client.post("/support_update_status", json={**body, "TOKEN": "remote-token-123"},
                       environ_base=remote).status_code == 200
    assert client.post("/support_update_status", json=body).status_code == 200  # loopback: no token
    assert gateway.system_status()["SYSTEM_STATUS"]["system_support_services"]["mon"]["data"] == {"cpu": 5}


def test_support_processes_post_to_where_the_gateway_listens(tmp_path):
    from basic_inference_server.config import parse_config
    from basic_inference_server.gateway.supervision.children import support_config
    from basic_inference_server.gateway.supervision.supervisor import connect_host

    (tmp_path / "endpoints").mkdir()
    (tmp_path / "endpoints" / "mon.py").write_text("print('support')\n")
    config = parse_config({"CONFIG_ENDPOINTS": {"mon": {"HOST": "NO_HOST", "PING_INTERVAL": 2, "LEVEL": 3}}},
                          tmp_path)
    data = support_config(config.endpoint("mon"), connect_host("0.0.0.0"), 5002)
    assert data == {"HOST": "NO_HOST", "PING_INTERVAL": 2.0, "LEVEL": 3, "SERVER": "127.0.0.1",
                    "SERVER_PORT": 5002, "SERVER_PATH": "/support_update_status", "SUPPORT_NAME": "mon"}
    assert support_config(config.endpoint("mon"), connect_host("127.0.0.2"), 5002)["SERVER"] == "127.0.0.2"
