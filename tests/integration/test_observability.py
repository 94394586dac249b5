"""/metrics, request ids and /dashboard/data through a real gateway and its model servers."""

from __future__ import annotations

import copy
import re
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import ECHO_CONFIG


def observability_config() -> dict:
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"]["batched"] = {"SERVER_CLASS": "batch_model", "NR_WORKERS": 1,
                                             "MAX_BATCH_SIZE": 8, "MAX_BATCH_WAIT_MS": 30}
    return config


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition (labels matched exactly)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def test_metrics_count_exactly_what_was_sent_in_gateway_and_servers(gateway_factory):
    gateway = gateway_factory(observability_config())
    for i in range(50):
        assert gateway.run("echo", VALUE=i).status_code == 200
    for _ in range(3):
        assert gateway.run("echo", FAIL=1, VALUE=0).status_code == 500
    assert gateway.run("no_such_model", VALUE=1).status_code == 404
    assert gateway.post("/run", {"NO_SIGNATURE": 1}).status_code == 400
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda i: requests.post(gateway.url + "/run", json={"SIGNATURE": "batched", "VALUE": i},
                                                      timeout=30).status_code, range(16)))
    assert codes == [200] * 16

    reply = gateway.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.text
    # Counted by the gateway.
    assert sample(text, "bis_requests_total", signature="echo", code="200") == 50
    assert sample(text, "bis_requests_total", signature="echo", code="500") == 3
    assert sample(text, "bis_requests_total", signature="(unknown)", code="404") == 1
    assert sample(text, "bis_requests_total", signature="(none)", code="400") == 1
    assert sample(text, "bis_request_duration_seconds_count", signature="echo") == 53
    # Measured inside the model server, fetched at scrape time.
    assert sample(text, "bis_model_duration_seconds_count", signature="echo", replica="1") == 53
    assert sample(text, "bis_queue_wait_seconds_count", signature="echo", replica="1") == 53
    assert sample(text, "bis_workers", signature="echo", replica="1") == 2
    assert sample(text, "bis_workers_ready", signature="echo", replica="1") == 2
    assert sample(text, "bis_workers_busy", signature="echo", replica="1") == 0
    assert sample(text, "bis_queue_depth", signature="echo", replica="1") == 0
    assert sample(text, "bis_model_duration_seconds_count", signature="batched", replica="1") == 16
    batches = sample(text, "bis_batch_size_count", signature="batched", replica="1")
    assert batches is not None and batches < 16  # grouped
    assert sample(text, "bis_batch_size_sum", signature="batched", replica="1") == 16
    assert sample(text, "bis_batch_size_count", signature="echo", replica="1") is None  # no batching there
    # State, restarts, memory and CPU of every process.
    assert sample(text, "bis_server_state", signature="echo", replica="1", state="READY") == 1
    assert sample(text, "bis_server_state", signature="echo", replica="1", state="FAILED") == 0
    assert sample(text, "bis_server_restarts_total", signature="echo", replica="1") == 0
    for process in ("gateway", "echo", "echo_b", "batched", "helper"):
        assert sample(text, "bis_process_resident_memory_bytes", process=process) > 5 * 2**20, process
        assert sample(text, "bis_process_cpu_seconds_total", process=process) > 0, process


def test_request_ids_are_kept_generated_answered_and_logged(gateway_factory, tmp_path):
    gateway = gateway_factory(copy.deepcopy(ECHO_CONFIG))
    given = gateway.post("/run", {"SIGNATURE": "echo", "VALUE": 1}, headers={"X-Request-ID": "client-id.42"})
    assert given.status_code == 200 and given.headers["X-Request-ID"] == "client-id.42"

    made = gateway.run("echo", VALUE=1).headers["X-Request-ID"]
    again = gateway.run("echo", VALUE=1).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{24}", made) and made != again

    unsafe = gateway.post("/run", {"SIGNATURE": "echo", "VALUE": 1}, headers={"X-Request-ID": "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{24}", unsafe.headers["X-Request-ID"])  # replaced, never echoed

    # Errors from the gateway itself and from the model server carry the id in body and header.
    for payload, status in (({"SIGNATURE": "nope"}, 404), ({"SIGNATURE": "echo"}, 400),
                            ({"SIGNATURE": "echo", "VALUE": 1, "FAIL": 1}, 500)):
        reply = gateway.post("/run", payload, headers={"X-Request-ID": f"err-{status}"})
        assert reply.status_code == status
        assert reply.headers["X-Request-ID"] == f"err-{status}"
        assert reply.json()["error"]["request_id"] == f"err-{status}"
    # Other routes answer an id too.
    assert gateway.get("/health", headers={"X-Request-ID": "probe-1"}).headers["X-Request-ID"] == "probe-1"

    # The model server's log line about the failing request shows its id.
    logs = gateway.app_dir / "_cache" / "_logs"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for path in logs.glob("*.log") for line in path.read_text(errors="replace").splitlines()
                 if "err-500" in line]
        if lines:
            break
        time.sleep(0.1)
    assert lines and any("RuntimeError" in line for line in lines), list(logs.glob("*"))


def test_dashboard_data_has_servers_memory_support_data_and_series(gateway_factory):
    gateway = gateway_factory(copy.deepcopy(ECHO_CONFIG))
    for i in range(5):
        gateway.run("echo", VALUE=i)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = gateway.get("/dashboard/data").json()
        if data["SUPPORT_DATA"].get("helper", {}).get("data"):
            break
        time.sleep(0.2)
    assert set(data["AVAIL_SERVERS"]) == {"echo", "echo_b"}  # as /list_servers: disabled ones are not there
    assert data["AVAIL_SERVERS"]["echo"]["STATE"] == "READY"
    assert data["REQUESTS"]["echo"] == {"200": 5}
    assert data["MEMORY_MB"]["gateway"] > 5 and data["MEMORY_MB"]["echo"] > 5
    assert data["SUPPORT_DATA"]["helper"]["data"]
    assert data["SERIES"]["interval_s"] == 5
