"""Supervision: crashed, hung and broken children, support processes and their metrics."""

from __future__ import annotations

import copy
import os
import signal
import time

import psutil
from conftest import ECHO_CONFIG, Gateway


def config_with(**changes) -> dict:
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"].update(changes)
    return config


def support_status(gateway) -> dict:
    return gateway.get("/system_status").json()["SYSTEM_STATUS"]["system_support_services"]["helper"]


def restarted(gateway, name: str, old_pid: int):
    """The server's listing once it is READY again under a new process, else None."""
    info = gateway.servers()[name]
    return info if info["STATE"] == "READY" and info["PID"] not in (None, old_pid) else None


def wait_until(predicate, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(message)


def test_support_data_arrives_and_goes_stale_when_stopped(gateway_factory):
    gateway = gateway_factory(config_with())  # helper posts every 0.5 s
    started = time.monotonic()
    entry = wait_until(lambda: support_status(gateway)["data"], 1.0 + 0.5, "no support data within 2 intervals")
    assert time.monotonic() - started <= 2 * 0.5 + 0.5
    assert entry["beat"] >= 1 and "SIGNATURE" not in entry  # flat post, stored without SIGNATURE
    fresh = support_status(gateway)
    assert fresh["stale"] is False and fresh["age_s"] < 1.5

    assert gateway.admin("/kill_server", {"SIGNATURE": "helper"}).status_code == 200
    stale_at = time.monotonic()
    wait_until(lambda: support_status(gateway)["stale"], 3.0, "data not marked stale after 3 intervals")
    assert time.monotonic() - stale_at <= 3 * 0.5 + 0.5
    assert support_status(gateway)["data"]["beat"] >= entry["beat"]  # the last data is kept, marked stale


def test_killed_support_process_is_restarted_and_its_data_flows_again(gateway_factory):
    gateway = gateway_factory(config_with())
    wait_until(lambda: support_status(gateway)["data"], 3, "no first data")
    first_pid = support_status(gateway)["data"]["pid"]
    os.kill(first_pid, signal.SIGKILL)
    info = wait_until(
        lambda: (s := gateway.post("/list_servers").json()["SUPPORT_PROCESSES"]["helper"])["STATE"] == "READY"
        and s["PID"] not in (None, first_pid) and s,
        10, "support process not restarted")
    assert info["RESTARTS"] == 1 and info["LAST_EXIT_CODE"] == -9
    wait_until(lambda: support_status(gateway)["data"]["pid"] == info["PID"], 5, "new support process posts nothing")


def test_broken_endpoint_fails_once_without_restart_loop(gateway_factory):
    gateway = gateway_factory(config_with(broken={"SERVER_CLASS": "broken_load", "NR_WORKERS": 1}), wait_ready=False)
    failed = gateway.wait_state("broken", "FAILED")
    time.sleep(1.5)  # past the first restart's backoff (1 s), had one been scheduled
    again = gateway.servers()["broken"]
    assert again["STATE"] == "FAILED" and again["RESTARTS"] == 0 and again["PID"] is None
    assert failed["ERROR"] == again["ERROR"] and "weights.bin not found" in again["ERROR"]
    started = time.monotonic()
    reply = gateway.run("broken", VALUE=1)
    assert reply.status_code == 503 and time.monotonic() - started < 0.5
    gateway.wait_state("echo", "READY")
    assert gateway.run("echo", VALUE=1).status_code == 200


def test_crashing_server_is_restarted(gateway_factory):
    """A real crash is noticed and restarted; the backoff's timing is the fake-clock unit test's
    (tests/unit/test_supervision_policy.py)."""
    gateway = gateway_factory(config_with(crashy={"SERVER_CLASS": "crash_model", "NR_WORKERS": 1}), wait_ready=False)
    info = wait_until(lambda: (s := gateway.servers()["crashy"])["RESTARTS"] >= 2 and s, 6, "not restarted twice")
    assert info["LAST_EXIT_CODE"] == 7 and "exited with code 7" in info["ERROR"]
    reply = gateway.run("crashy", VALUE=1)
    assert reply.status_code == 503 and int(reply.headers["Retry-After"]) >= 1
    gateway.wait_state("echo", "READY")
    assert gateway.run("echo", VALUE=1).status_code == 200


def test_stuck_server_is_not_ready_and_gets_recycled(gateway_factory):
    config = config_with(stuck={"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "REQUEST_TIMEOUT": 0.5})
    config["SHUTDOWN_GRACE"] = 1
    gateway = gateway_factory(config)
    old_pid = gateway.servers()["stuck"]["PID"]
    assert gateway.run("stuck", VALUE=1, SLEEP=60).status_code == 504  # the worker is now stuck for a minute
    # Past 3 x REQUEST_TIMEOUT the server reports itself STUCK: requests get 503 at once, not a hang.
    wait_until(lambda: gateway.servers()["stuck"]["HEALTH_FAILURES"] >= 1, 4, "stuck server still looks healthy")
    started = time.monotonic()
    reply = gateway.run("stuck", VALUE=2)
    assert reply.status_code == 503 and time.monotonic() - started < 0.5
    assert "stuck" in reply.json()["ERROR"]
    after = wait_until(lambda: restarted(gateway, "stuck", old_pid), 15, "stuck server was not recycled")
    assert after["RESTARTS"] == 1
    assert gateway.run("stuck", VALUE=3).status_code == 200
    assert gateway.run("echo", VALUE=4).status_code == 200


def test_gateway_sigkill_leaves_no_child_even_support(gateway_factory):
    gateway = gateway_factory(config_with())
    children = psutil.Process(gateway.proc.pid).children(recursive=True)
    assert len(children) == 3
    os.kill(gateway.proc.pid, signal.SIGKILL)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_metric_intake_takes_flat_and_nested_posts_and_rejects_bad_ones(gateway_factory):
    gateway = gateway_factory(config_with(helper={"HOST": "NO_HOST", "PING_INTERVAL": 60}))
    path = "/support_update_status"
    assert gateway.post(path, {"SIGNATURE": "helper", "data": {"x": 1}}).status_code == 200
    assert support_status(gateway)["data"] == {"x": 1}
    assert gateway.post(path, {"SIGNATURE": "helper", "y": 2, "msg": "flat"}).status_code == 200
    assert support_status(gateway)["data"] == {"y": 2, "msg": "flat"}
    assert gateway.post(path, {"SIGNATURE": "helper"}).status_code == 400  # no metrics
    assert gateway.post(path, data=b"{oops", headers={"Content-Type": "application/json"}).status_code == 400
    assert gateway.post(path, {"data": {"x": 1}}).status_code == 400  # no SIGNATURE
    assert gateway.post(path, {"SIGNATURE": "nobody", "x": 1}).status_code == 404
    assert gateway.post(path, {"SIGNATURE": "echo", "x": 1}).status_code == 404  # a model server
    assert support_status(gateway)["data"] == {"y": 2, "msg": "flat"}


def test_history_is_kept_across_runs(tmp_path, gateway_factory):
    first = gateway_factory(config_with())
    first.admin("/shutdown", {"SIGNATURE": "SAFE_KILL_SERVER_CMD"})
    assert first.proc.wait(15) == 0
    second = Gateway(first.app_dir)
    second.port, second.first_server_port, second.url = first.port, first.first_server_port, first.url
    try:
        second.start()
        history = second.get("/system_status").json()["SYSTEM_HISTORY"]
        assert history["PREVIOUS_STARTUP"] and history["CURRENT_STARTUP"] and history["LAST_SHUTDOWN"]
        events = [e["event"] for e in history["EVENTS"]]
        assert events[:3] == ["STARTUP", "SHUTDOWN", "STARTUP"]
    finally:
        second.stop()
        second.assert_nothing_left()


def test_stopped_server_starts_again_and_is_supervised(gateway_factory):
    gateway = gateway_factory(config_with())
    assert gateway.admin("/kill_server", {"SIGNATURE": "echo_b"}).status_code == 200
    assert gateway.admin("/start_server", {"SIGNATURE": "echo_b"}).status_code == 202
    assert gateway.admin("/start_server", {"SIGNATURE": "echo_b"}).status_code == 409
    info = gateway.wait_state("echo_b", "READY", timeout=5)
    assert gateway.run("echo_b", VALUE="again").json()["predict_result"]["echo"] == "again"
    os.kill(info["PID"], signal.SIGKILL)  # and it is supervised again: restarted after a crash
    wait_until(lambda: restarted(gateway, "echo_b", info["PID"]), 10, "restarted server not supervised")


def test_kill_all_also_stops_children_waiting_to_restart(gateway_factory):
    gateway = gateway_factory(config_with(crashy={"SERVER_CLASS": "crash_model", "NR_WORKERS": 1}), wait_ready=False)
    gateway.wait_state("echo", "READY")
    gateway.wait_state("crashy", "RESTARTING")
    killed = gateway.admin("/kill_server", {"SIGNATURE": "*"}).json()["KILLED"]
    assert set(killed) == {"echo", "echo_b", "crashy", "helper"}
    restarts = gateway.servers()["crashy"]["RESTARTS"]
    time.sleep(3)
    servers = gateway.servers()
    assert all(s["STATE"] == "STOPPED" for s in servers.values()), servers
    assert servers["crashy"]["RESTARTS"] == restarts


def test_growing_a_slow_loading_server_keeps_it_serving_and_survives_restart(gateway_factory):
    gateway = gateway_factory(config_with(slow={"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "LOAD_SECONDS": 2}))
    grown = gateway.admin("/update_workers", {"SIGNATURE": "slow", "NR_WORKERS": 2})
    assert grown.status_code == 200, grown.text
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # the new worker loads for 2 s: the old one keeps serving
        reply = gateway.run("slow", VALUE="during")
        assert reply.status_code == 200, reply.text
        assert gateway.servers()["slow"]["STATE"] == "READY"
        time.sleep(0.2)
    assert gateway.servers()["slow"]["WORKERS"]["ready"] == 2
    pid = gateway.servers()["slow"]["PID"]
    os.kill(pid, signal.SIGKILL)
    after = wait_until(lambda: restarted(gateway, "slow", pid), 15, "not restarted")
    wait_until(lambda: gateway.servers()["slow"]["WORKERS"].get("ready") == 2, 5, "restart lost the new size")
    assert after["RESTARTS"] == 1


def test_saturated_endpoint_sheds_load_and_the_gateway_keeps_answering(gateway_factory):
    from concurrent.futures import ThreadPoolExecutor

    gateway = gateway_factory(config_with(tiny={"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "MAX_QUEUE": 2}))

    def slow_call(i):
        with __import__("requests").Session() as session:
            return session.post(gateway.url + "/run", json={"SIGNATURE": "tiny", "VALUE": i, "SLEEP": 1},
                                timeout=30).status_code

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(slow_call, i) for i in range(40)]
        time.sleep(0.5)
        started = time.monotonic()
        assert gateway.get("/health", timeout=5).status_code == 200
        assert gateway.get("/ready", timeout=5).status_code == 200
        assert gateway.run("echo", VALUE="other").status_code == 200
        assert time.monotonic() - started < 2.0
        statuses = [f.result() for f in futures]
    assert statuses.count(200) == 3  # one running + MAX_QUEUE waiting
    assert statuses.count(503) == 37
