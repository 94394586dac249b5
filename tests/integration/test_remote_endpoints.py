"""Remote endpoints (``URLS``): a gateway routing to model servers it did not start (each one the
``endpoint`` command in its own process), over HTTP with the shared secret: spread by requests
in flight, an address taken out when it dies or drains and back when it recovers, no request
lost to a drain, states in /list_servers and /metrics."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time

import pytest
import requests
import trustme
from conftest import FIXTURES, make_app
from test_endpoint_command import EndpointProcess

FILES = [FIXTURES / "endpoints" / "echo_model.py"]
SECRET = "remote-secret-7d2e41b9"
REMOTE_ENTRY = {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 10}


@pytest.fixture
def remote_servers(tmp_path):
    """Start model servers of ``echo`` on their own (the endpoint command), with the secret."""
    started: list[EndpointProcess] = []

    def start(count: int, env: dict[str, str] | None = None) -> list[EndpointProcess]:
        for _ in range(count):
            app = make_app(tmp_path / f"server{len(started)}", {"CONFIG_ENDPOINTS": {"echo": REMOTE_ENTRY}}, FILES)
            started.append(EndpointProcess(app, env={"BIS_ENDPOINT_TOKEN": SECRET, **(env or {})}).start())
        return started[-count:]

    yield start
    for server in started:
        server.stop()
    for server in started:
        server.assert_nothing_left()


def remote_gateway(gateway_factory, servers, secret: str = SECRET, **entry):
    urls = [f"http://127.0.0.1:{s.port}" for s in servers]
    config = {"CONFIG_ENDPOINTS": {"echo": {**REMOTE_ENTRY, "URLS": urls, **entry},
                                   "local": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1}}}
    return gateway_factory(config, FILES, env={"BIS_ENDPOINT_TOKEN": secret})


def load(gateway, stop: threading.Event, results: list, threads: int = 4) -> list[threading.Thread]:
    """Clients sending /run to echo until ``stop``: results get (status, pid or error, time)."""
    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    reply = session.post(gateway.url + "/run", json={"SIGNATURE": "echo", "VALUE": 1, "SLEEP": 0.005},
                                         timeout=20)
                    body = reply.json()
                    results.append((reply.status_code, body.get("predict_result", {}).get("pid")
                                    if reply.status_code == 200 else body.get("ERROR"), time.monotonic()))
                except (requests.RequestException, ValueError) as exc:  # a lost request is a result too
                    results.append((0, repr(exc), time.monotonic()))
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers


def test_requests_spread_over_the_remote_servers_with_the_secret(gateway_factory, remote_servers):
    servers = remote_servers(3)
    gateway = remote_gateway(gateway_factory, servers)
    listed = gateway.servers()
    addresses = {f"echo@127.0.0.1:{s.port}" for s in servers}
    assert addresses <= set(listed)
    for name in addresses:
        assert listed[name]["STATE"] == "READY" and listed[name]["REMOTE"] is True and listed[name]["PID"] is None
    assert listed["local"]["STATE"] == "READY"  # a local child beside them, as before
    stop, results = threading.Event(), []
    workers = load(gateway, stop, results, threads=6)
    time.sleep(3)
    stop.set()
    for worker in workers:
        worker.join(30)
    assert results and all(status == 200 for status, _, _ in results), results[:5]
    counts = collections.Counter(pid for _, pid, _ in results)
    assert set(counts) == {s.proc.pid for s in servers}  # the model servers are those processes
    assert min(counts.values()) >= 0.15 * len(results), counts
    served = {name: gateway.servers()[name]["REQUESTS_SERVED"] for name in addresses}
    assert sum(served.values()) == len(results)
    metrics = gateway.get("/metrics").text
    for server in servers:
        assert f'bis_remote_server_state{{address="127.0.0.1:{server.port}",signature="echo",state="READY"}} 1.0' \
            in metrics
        assert f'bis_workers{{replica="127.0.0.1:{server.port}",signature="echo"}} 2.0' in metrics
    # The body names the endpoint it was routed by; a nested "SIGNATURE" first is routed again.
    nested = gateway.post("/run", data=b'{"VALUE": {"SIGNATURE": "local"}, "SIGNATURE": "echo"}',
                          headers={"Content-Type": "application/json"})
    assert nested.status_code == 200 and nested.json()["predict_result"]["pid"] in counts
    assert SECRET not in gateway.output() and all(SECRET not in s.output() for s in servers)


def test_a_killed_server_is_taken_out_and_taken_back(gateway_factory, remote_servers):
    servers = remote_servers(2)
    gateway = remote_gateway(gateway_factory, servers)
    victim, survivor = servers
    stop, results = threading.Event(), []
    workers = load(gateway, stop, results)
    time.sleep(1)
    killed_at = time.monotonic()
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(5)
    name = f"echo@127.0.0.1:{victim.port}"
    down = gateway.wait_state(name, "DOWN", timeout=5)
    assert down["ERROR"]
    time.sleep(max(0.0, killed_at + 3.5 - time.monotonic()))
    stop.set()
    for worker in workers:
        worker.join(30)
    failed = [r for r in results if r[0] != 200]
    # Only what was in flight on the killed server may fail (2 workers, 4 clients), all of it at once.
    assert len(failed) <= 4, failed
    assert all(t - killed_at < 2 for _, _, t in failed), failed
    late = [pid for status, pid, t in results if t > killed_at + 2]
    assert late and set(late) == {survivor.proc.pid}
    assert gateway.servers()[name]["REQUESTS_UNREACHED"] >= 1
    victim.start()  # the same port again: the probes bring it back
    gateway.wait_state(name, "READY", timeout=10)
    pids = {gateway.run("echo", VALUE=i).json()["predict_result"]["pid"] for i in range(20)}
    assert victim.proc.pid in pids


def test_a_draining_server_loses_no_request(gateway_factory, remote_servers):
    servers = remote_servers(2)
    gateway = remote_gateway(gateway_factory, servers)
    leaving = servers[0]
    stop, results = threading.Event(), []
    workers = load(gateway, stop, results)
    time.sleep(1)
    os.kill(leaving.proc.pid, signal.SIGTERM)  # it finishes what it has and refuses the rest
    assert leaving.proc.wait(15) == 0
    time.sleep(1)
    stop.set()
    for worker in workers:
        worker.join(30)
    assert [r for r in results if r[0] != 200] == []
    assert len({pid for _, pid, _ in results}) == 2
    state = gateway.servers()[f"echo@127.0.0.1:{leaving.port}"]["STATE"]
    assert state in ("DRAINING", "DOWN")


def test_clear_errors_when_no_remote_server_can_answer(gateway_factory, remote_servers):
    servers = remote_servers(1)
    config = {"CONFIG_ENDPOINTS": {
        "echo": {**REMOTE_ENTRY, "URLS": f"http://localhost:{servers[0].port}"},  # a name, resolved to 127.0.0.1
        "nowhere": {**REMOTE_ENTRY, "URLS": ["http://no-such-host.invalid:5003"]},
        "other": {**REMOTE_ENTRY, "URLS": [f"http://127.0.0.1:{servers[0].port}"]},  # echo's server, not other's
        "local": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1}}}
    wrong = gateway_factory(config, FILES, env={"BIS_ENDPOINT_TOKEN": SECRET + "-wrong"}, wait_ready=False)
    wrong.wait_state(f"echo@127.0.0.1:{servers[0].port}", "READY", timeout=10)
    wrong.wait_state("local", "READY", timeout=20)
    refused = wrong.run("echo", VALUE=1)
    assert refused.status_code == 502 and "BIS_ENDPOINT_TOKEN" in refused.json()["ERROR"]
    unresolved = wrong.run("nowhere", VALUE=1)
    assert unresolved.status_code == 503 and "no-such-host.invalid" in unresolved.json()["ERROR"]
    ready = wrong.get("/ready")
    assert ready.status_code == 503 and "nowhere" in ready.json()["NOT_READY"]
    assert wrong.run("local", VALUE=1).status_code == 200  # the rest works
    other = wrong.wait_state(f"other@127.0.0.1:{servers[0].port}", "DOWN", timeout=5)
    assert "serves 'echo', not 'other'" in other["ERROR"]
    assert wrong.run("other", VALUE=1).status_code == 503  # never sent to another endpoint's model
    started = wrong.admin("/start_server", {"SIGNATURE": "echo"})
    assert started.status_code == 409 and "URLS" in started.json()["ERROR"]
    servers[0].stop()
    wrong.wait_state(f"echo@127.0.0.1:{servers[0].port}", "DOWN", timeout=5)
    gone = wrong.run("echo", VALUE=1)
    assert gone.status_code == 503 and "no model server is READY" in gone.json()["ERROR"]
    assert "Traceback" not in wrong.output()


def test_a_stream_from_a_remote_server_is_relayed_item_by_item(gateway_factory, tmp_path):
    entry = {"SERVER_CLASS": "stream_model", "NR_WORKERS": 2}
    files = [FIXTURES / "endpoints" / "stream_model.py"]
    server = EndpointProcess(make_app(tmp_path / "streamer", {"CONFIG_ENDPOINTS": {"stream": entry}}, files),
                             env={"BIS_ENDPOINT_TOKEN": SECRET})
    try:
        server.start(extra_args=["stream"])
        config = {"CONFIG_ENDPOINTS": {"stream": {**entry, "URLS": [f"http://127.0.0.1:{server.port}"]}}}
        gateway = gateway_factory(config, files, env={"BIS_ENDPOINT_TOKEN": SECRET})
        with requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", "N": 4, "GAP_MS": 200}, stream=True,
                           headers={"Accept": "application/x-ndjson"}, timeout=20) as reply:
            assert reply.headers["Content-Type"] == "application/x-ndjson"
            lines = reply.iter_lines()
            first = json.loads(next(lines))
            first_at = time.time()
            rest = [json.loads(line) for line in lines]
        assert first["i"] == 0 and first_at < rest[2]["t"]  # read before the generator made the last one
        assert [item["i"] for item in rest[:3]] == [1, 2, 3]
        end = rest[3]["END"]
        assert end["items"] == 4 and end["signature"].split(".")[1] == "stream_model" and "ver" in end
        failed = requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", "N": 5, "FAIL_AT": 2},
                               headers={"Accept": "text/event-stream"}, timeout=20)
        events = failed.text.split("\n\n")
        assert events[0].startswith("data: ") and events[2].startswith("event: error\ndata: ")
        assert "failed at item 2" in events[2]
        refused = gateway.post("/run", {"SIGNATURE": "stream", "BAD": True}, headers={"Accept": "text/event-stream"})
        assert refused.status_code == 400 and "BAD input refused" in refused.json()["ERROR"]
    finally:
        server.stop()
    server.assert_nothing_left()


def test_reload_config_moves_an_endpoint_to_remote_servers_and_back(gateway_factory, remote_servers):
    [server] = remote_servers(1)
    local = {"CONFIG_ENDPOINTS": {"echo": REMOTE_ENTRY}}
    gateway = gateway_factory(local, FILES, env={"BIS_ENDPOINT_TOKEN": SECRET})
    child = gateway.servers()["echo"]["PID"]
    assert gateway.run("echo", VALUE=1).json()["predict_result"]["pid"] == child
    config_path = gateway.app_dir / "config_gateway.txt"
    remote = {"CONFIG_ENDPOINTS": {"echo": {**REMOTE_ENTRY, "URLS": [f"http://127.0.0.1:{server.port}"]}}}
    config_path.write_text(json.dumps(remote))
    changed = gateway.admin("/reload_config", {})
    assert changed.status_code == 200 and changed.json()["CHANGED"] == ["echo"]
    gateway.wait_state(f"echo@127.0.0.1:{server.port}", "READY", timeout=10)
    assert "echo" not in gateway.servers()  # its child was stopped
    assert {gateway.run("echo", VALUE=i).json()["predict_result"]["pid"] for i in range(5)} == {server.proc.pid}
    config_path.write_text(json.dumps(local))
    stop, results = threading.Event(), []
    clients = load(gateway, stop, results, threads=2)
    try:
        time.sleep(0.3)
        assert gateway.admin("/reload_config", {}).status_code == 200  # answered once the child is READY
        assert gateway.servers()["echo"]["STATE"] == "READY"
        assert f"echo@127.0.0.1:{server.port}" not in gateway.servers()
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
    assert [r for r in results if r[0] != 200] == []  # served remotely until the child here was READY
    new_child = gateway.servers()["echo"]["PID"]
    assert {r[1] for r in results} == {server.proc.pid, new_child}
    assert gateway.run("echo", VALUE=1).json()["predict_result"]["pid"] == new_child


def test_https_urls_take_tls_checked_against_the_ca(gateway_factory, tmp_path):
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    app = make_app(tmp_path / "tls_server", {"CONFIG_ENDPOINTS": {"echo": REMOTE_ENTRY}}, FILES)
    server = EndpointProcess(app, env={"BIS_ENDPOINT_TOKEN": SECRET, "BIS_TLS_CERT_FILE": str(cert),
                                       "BIS_TLS_KEY_FILE": str(key)})
    server.url, server.session.verify = f"https://localhost:{server.port}", str(ca_file)
    server.session.trust_env = False  # REQUESTS_CA_BUNDLE would take the place of the CA
    try:
        server.start()  # its /health answered over TLS, verified against the CA
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{server.port}/health", timeout=5)  # no plain HTTP on that port
        config = {"CONFIG_ENDPOINTS": {"echo": {**REMOTE_ENTRY, "URLS": [f"https://localhost:{server.port}"]}}}
        gateway = gateway_factory(config, FILES, env={"BIS_ENDPOINT_TOKEN": SECRET, "BIS_TLS_CA_FILE": str(ca_file)})
        listed = gateway.wait_state(f"echo@127.0.0.1:{server.port}", "READY", timeout=10)
        assert listed["URL"] == f"https://localhost:{server.port}"
        assert {gateway.run("echo", VALUE=i).json()["predict_result"]["pid"] for i in range(10)} == {server.proc.pid}
        streamed = requests.post(gateway.url + "/run", json={"SIGNATURE": "echo", "VALUE": 2, "STREAM": True},
                                 headers={"Accept": "application/x-ndjson"}, timeout=20)
        assert streamed.status_code == 200 and streamed.headers["Content-Type"] == "application/x-ndjson"
        untrusting = gateway_factory(config, FILES, env={"BIS_ENDPOINT_TOKEN": SECRET}, wait_ready=False)
        refused = untrusting.wait_state(f"echo@127.0.0.1:{server.port}", "DOWN", timeout=10)
        assert "CERTIFICATE_VERIFY_FAILED" in refused["ERROR"]
        answer = untrusting.run("echo", VALUE=1)
        assert answer.status_code == 503 and "CERTIFICATE_VERIFY_FAILED" in answer.json()["ERROR"]
        assert gateway.run("echo", VALUE=3).status_code == 200  # the other gateway goes on
    finally:
        server.stop()
    server.assert_nothing_left()
