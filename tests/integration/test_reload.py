"""Blue-green reloads through real processes: /reload_server under load loses nothing, answers
change to the new code only after the switch, and a broken reload leaves the old code serving."""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from conftest import ECHO_CONFIG, FIXTURES, _alive

FILES = [FIXTURES / "endpoints" / name for name in ("versioned_model.py", "echo_model.py")]


def reload_config(**ver: Any) -> dict[str, Any]:
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"] = {
        "ver": {"SERVER_CLASS": "versioned_model", "NR_WORKERS": 2, **ver},
        "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2},
    }
    return config


class Load:
    """Client threads over two endpoints; every answer is kept, in order, per thread."""

    def __init__(self, gateway, threads: int = 8):
        self.gateway = gateway
        self.stop = threading.Event()
        self.answers: list[list[tuple[int | None, Any]]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        with requests.Session() as session:
            sequence = 0
            while not self.stop.is_set():
                sequence += 1
                name = "ver" if index % 2 == 0 else "echo"
                body = {"SIGNATURE": name, "ID": sequence} if name == "ver" else {"SIGNATURE": name, "VALUE": sequence}
                try:
                    reply = session.post(self.gateway.url + "/run", json=body, timeout=15)
                    result = reply.json().get("predict_result") if reply.status_code == 200 else reply.text
                    self.answers[index].append((reply.status_code, result))
                except requests.RequestException as exc:
                    self.answers[index].append((None, repr(exc)))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)

    def statuses(self) -> Counter:
        return Counter(status for answers in self.answers for status, _ in answers)

    def versions(self) -> list[list[int]]:
        return [[result["version"] for status, result in answers if status == 200]
                for index, answers in enumerate(self.answers) if index % 2 == 0]


def reload(gateway, signature: str = "ver") -> requests.Response:
    return gateway.admin("/reload_server", {"SIGNATURE": signature})


def set_version(gateway, version: int) -> None:
    path = Path(gateway.app_dir) / "endpoints" / "versioned_model.py"
    text = path.read_text()
    path.write_text("\n".join(f"VERSION = {version}" if line.startswith("VERSION = ") else line
                              for line in text.splitlines()) + "\n")


def test_reloading_changed_code_under_load_loses_nothing_and_switches_once(gateway_factory):
    gateway = gateway_factory(reload_config())
    old_pid = gateway.servers()["ver"]["PID"]
    echo_pid = gateway.servers()["echo"]["PID"]
    with Load(gateway) as load:
        for version in (2, 3, 4):
            time.sleep(0.7)
            set_version(gateway, version)
            answer = reload(gateway)
            assert answer.status_code == 200, answer.text
            (done,) = answer.json()["RELOADS"]
            assert done["STATE"] == "DONE" and done["GENERATION"] == version
        time.sleep(0.7)
    statuses = load.statuses()
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 200
    for versions in load.versions():  # each client sees 1, then 2, ... never an old one after a new one
        assert versions == sorted(versions) and versions[0] == 1 and versions[-1] == 4
    servers = gateway.servers()
    assert servers["ver"]["PID"] != old_pid and servers["ver"]["GENERATION"] == 4
    assert servers["echo"]["PID"] == echo_pid  # the other endpoint is not touched
    assert servers["ver"]["LAST_RELOAD"]["STATE"] == "DONE"
    gateway.remember_children()


def test_a_broken_reload_leaves_the_old_code_answering_and_is_reported(gateway_factory):
    gateway = gateway_factory(reload_config())
    path = Path(gateway.app_dir) / "endpoints" / "versioned_model.py"
    good = path.read_text()
    with Load(gateway) as load:
        time.sleep(0.3)
        path.write_text(good + "\nthis is not python (\n")
        broken = reload(gateway)
        path.write_text(good.replace("_CONFIG = {\"WEIGHT\": 1, \"FAIL_LOAD\": False}",
                                     "_CONFIG = {\"WEIGHT\": 1, \"FAIL_LOAD\": True}"))
        failing = reload(gateway)
        time.sleep(0.3)
    assert broken.status_code == 400 and "syntax error" in broken.json()["ERROR"]
    assert failing.status_code == 422, failing.text
    body = failing.json()
    assert body["error"]["type"] == "ReloadFailed" and "FAIL_LOAD is set" in body["ERROR"]
    assert body["RELOADS"][0]["STATE"] == "FAILED"
    assert set(load.statuses()) == {200}
    assert all(set(versions) == {1} for versions in load.versions())
    info = gateway.servers()["ver"]
    assert info["STATE"] == "READY" and info["GENERATION"] == 1
    assert info["LAST_RELOAD"]["STATE"] == "FAILED" and "FAIL_LOAD" in info["LAST_RELOAD"]["ERROR"]
    events = gateway.post("/system_status").json()["SYSTEM_HISTORY"]["EVENTS"]
    assert [e["event"] for e in events].count("RELOAD_FAILED") == 2
    assert "FAILED" not in [e["event"] for e in events]  # the endpoint itself never failed


def test_replicas_are_replaced_one_at_a_time_without_a_failed_request(gateway_factory):
    gateway = gateway_factory(reload_config(NR_REPLICAS=2))
    before = {name: info["PID"] for name, info in gateway.servers().items() if name.startswith("ver")}
    with Load(gateway) as load:
        time.sleep(0.5)
        set_version(gateway, 2)
        answer = reload(gateway)
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["RELOADS"][0]["PIDS"]) == 2
    assert set(load.statuses()) == {200}
    after = {name: info for name, info in gateway.servers().items() if name.startswith("ver")}
    assert set(after) == {"ver", "ver#2"}
    assert all(info["GENERATION"] == 2 and info["PID"] not in before.values() for info in after.values())
    gateway.remember_children()


def test_reload_needs_the_token_and_a_started_endpoint(gateway_factory):
    gateway = gateway_factory(reload_config())
    assert gateway.post("/reload_server", {"SIGNATURE": "ver"}).status_code == 401
    assert reload(gateway, "nope").status_code == 404
    everything = reload(gateway, "*")
    assert everything.status_code == 200
    assert sorted(r["SIGNATURE"] for r in everything.json()["RELOADS"]) == ["echo", "ver"]
    gateway.remember_children()


def test_without_a_free_port_the_replica_is_replaced_in_place_and_says_so(gateway_factory):
    gateway = gateway_factory(reload_config(), start=False)
    gateway.start(extra_args=["--last_server_port", str(gateway.first_server_port + 1)])  # one port each
    set_version(gateway, 2)
    with requests.Session() as session:
        answer = reload(gateway)
        assert answer.status_code == 200, answer.text
        (done,) = answer.json()["RELOADS"]
        assert done["STATE"] == "DONE" and "in place" in done["IN_PLACE"] and "no free port" in done["IN_PLACE"]
        reply = session.post(gateway.url + "/run", json={"SIGNATURE": "ver"}, timeout=10)
        assert reply.json()["predict_result"]["version"] == 2
    info = gateway.servers()["ver"]
    assert info["GENERATION"] == 2 and info["PORT"] == gateway.first_server_port
    gateway.remember_children()


def test_reload_config_by_sighup_and_route_adds_changes_and_removes_endpoints(gateway_factory):
    import json
    import signal

    gateway = gateway_factory(reload_config())
    config_path = Path(gateway.app_dir) / "config_gateway.txt"
    config = json.loads(config_path.read_text())
    echo_pid = gateway.servers()["echo"]["PID"]
    with Load(gateway) as load:
        time.sleep(0.3)
        config["CONFIG_ENDPOINTS"]["ver"]["NR_WORKERS"] = 3
        config["CONFIG_ENDPOINTS"]["third"] = {"SERVER_CLASS": "versioned_model", "NR_WORKERS": 1, "WEIGHT": 3}
        config_path.write_text(json.dumps(config))
        gateway.proc.send_signal(signal.SIGHUP)
        gateway.wait_state("third", "READY", timeout=15)
        deadline = time.monotonic() + 15
        while gateway.servers()["ver"].get("GENERATION") != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    assert set(load.statuses()) == {200}, load.statuses()
    servers = gateway.servers()
    assert servers["ver"]["GENERATION"] == 2 and servers["ver"]["WORKERS"]["total"] == 3
    assert servers["echo"]["PID"] == echo_pid  # unchanged: not touched
    assert gateway.run("third").json()["predict_result"]["weight"] == 3
    gateway.remember_children()

    third_pid = servers["third"]["PID"]
    del config["CONFIG_ENDPOINTS"]["third"]
    config["SHUTDOWN_GRACE"] = 7
    config_path.write_text(json.dumps(config))
    answer = gateway.admin("/reload_config", {})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["REMOVED"] == ["third"] and body["NEEDS_RESTART"] == ["SHUTDOWN_GRACE"]
    assert sorted(body["UNCHANGED"]) == ["echo", "ver"] and body["CHANGED"] == []
    assert gateway.run("third").status_code == 404
    assert "third" not in gateway.servers()
    assert not _alive(third_pid)

    config["CONFIG_ENDPOINTS"]["ver"]["NR_WORKERS"] = 0
    config_path.write_text(json.dumps(config))
    bad = gateway.admin("/reload_config", {})
    assert bad.status_code == 400 and "CONFIG_ENDPOINTS.ver.NR_WORKERS" in bad.json()["ERROR"]
    assert gateway.servers()["ver"]["WORKERS"]["total"] == 3 and gateway.run("ver").status_code == 200


def test_max_requests_recycles_each_server_blue_green_under_load(gateway_factory):
    gateway = gateway_factory(reload_config(MAX_REQUESTS=150, MAX_REQUESTS_JITTER=20, NR_REPLICAS=2))
    with Load(gateway) as load:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(info.get("GENERATION", 1) - 1 for name, info in gateway.servers().items()
                   if name.startswith("ver")) >= 4:
                break
            time.sleep(0.1)
        time.sleep(0.3)
    assert set(load.statuses()) == {200}, load.statuses()
    servers = {name: info for name, info in gateway.servers().items() if name.startswith("ver")}
    assert sum(info["GENERATION"] - 1 for info in servers.values()) >= 4
    assert servers["ver"]["RECYCLES"].get("max_requests", 0) >= 4
    # A server past its 150-170 keeps serving while its successor starts, then its successor counts anew.
    total = load.statuses()[200] // 2  # the ver half of the load
    assert all(info["REQUESTS_SERVED"] < max(400, total // 2) for info in servers.values()), (servers, total)
    metrics = gateway.get("/metrics").text
    assert 'bis_server_recycles_total{reason="max_requests",signature="ver"}' in metrics
    events = [e["event"] for e in gateway.post("/system_status").json()["SYSTEM_HISTORY"]["EVENTS"]]
    assert events.count("RECYCLE") >= 4
    gateway.remember_children()


def test_max_rss_mb_recycles_a_server_that_leaks(gateway_factory):
    config = reload_config()
    config["CONFIG_ENDPOINTS"]["leaky"] = {"SERVER_CLASS": "leaky_model", "NR_WORKERS": 1, "MAX_RSS_MB": 80}
    gateway = gateway_factory(config, FILES + [FIXTURES / "endpoints" / "leaky_model.py"])
    first_pid = gateway.servers()["leaky"]["PID"]
    statuses = Counter()
    kept = []
    with requests.Session() as session:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and gateway.servers()["leaky"]["GENERATION"] < 3:
            reply = session.post(gateway.url + "/run", json={"SIGNATURE": "leaky"}, timeout=10)
            statuses[reply.status_code] += 1
            if reply.status_code == 200:
                kept.append(reply.json()["predict_result"]["kept_mb"])
            time.sleep(0.01)
    assert set(statuses) == {200}, statuses
    info = gateway.servers()["leaky"]
    assert info["GENERATION"] >= 3 and info["PID"] != first_pid
    assert info["RECYCLES"]["max_rss"] >= 2
    # Bounded: the limit plus what leaks between two probes (1 s) and while the next one starts.
    assert max(kept) < 250, max(kept)
    assert kept.count(1) >= 2  # each generation's first answer: its own leak starts again from 0
    gateway.remember_children()


def test_an_in_place_replacement_leaves_exactly_one_process_for_the_replica(gateway_factory):
    import psutil

    gateway = gateway_factory(reload_config(), start=False)
    gateway.start(extra_args=["--last_server_port", str(gateway.first_server_port + 1)])
    for version in (2, 3):
        set_version(gateway, version)
        assert reload(gateway).status_code == 200
    time.sleep(0.5)
    servers = []
    for child in psutil.Process(gateway.proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "basic_inference_server.server" in " ".join(child.cmdline()):
                servers.append(child)
        except psutil.Error:
            continue
    assert len(servers) == 2, [p.pid for p in servers]  # ver and echo, nothing orphaned or doubled
    assert {gateway.servers()["ver"]["PID"], gateway.servers()["echo"]["PID"]} == {p.pid for p in servers}
