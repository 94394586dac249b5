"""``basic-inference-server endpoint <name>``: one endpoint's model server as a process of its own,
from the same config and endpoints as the gateway: health, answers, drain on SIGTERM, and the
shared secret BIS_ENDPOINT_TOKEN."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import FIXTURES, REPO, EndpointProcess, make_app

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2},
                               "helper": {"HOST": "NO_HOST"}}}
FILES = [FIXTURES / "endpoints" / "echo_model.py", FIXTURES / "endpoints" / "helper.py"]
TOKEN = "endpoint-secret-4f1c9a"


def started(tmp_path, env=None, **kwargs) -> EndpointProcess:
    process = EndpointProcess(make_app(tmp_path, CONFIG, FILES), env=env)
    return process.start(**kwargs)


def test_the_endpoint_runs_on_its_own_and_drains_on_sigterm(tmp_path):
    process = started(tmp_path, command=[sys.executable, str(REPO / "run_gateway.py")])
    try:
        answer = process.run("echo", VALUE="alone").json()
        assert answer["predict_result"]["echo"] == "alone"
        assert answer["predict_result"]["pid"] == process.proc.pid  # the model server is this process
        assert process.get("/stats").json()["name"] == "echo"
        slow: dict = {}
        thread = threading.Thread(target=lambda: slow.update(r=process.run("echo", VALUE="late", SLEEP=1)))
        thread.start()
        deadline = time.monotonic() + 5
        while not process.get("/health").json()["workers"]["busy"] and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.proc.pid, signal.SIGTERM)
        thread.join(10)
        assert slow["r"].status_code == 200 and slow["r"].json()["predict_result"]["echo"] == "late"
        assert process.proc.wait(15) == 0
        assert "Stopping: finishing 1 request(s) in flight" in process.output()
    finally:
        process.stop()
    process.assert_nothing_left()


def test_the_shared_secret_guards_run_and_is_never_logged(tmp_path):
    process = started(tmp_path, env={"BIS_ENDPOINT_TOKEN": TOKEN})
    try:
        url = f"{process.url}/run"
        refused = requests.post(url, json={"VALUE": 1}, timeout=10)
        assert refused.status_code == 401 and "X-Endpoint-Token" in refused.json()["ERROR"]
        wrong = requests.post(url, json={"VALUE": 1}, headers={"X-Endpoint-Token": TOKEN + "x"}, timeout=10)
        assert wrong.status_code == 401
        right = requests.post(url, json={"VALUE": 1}, headers={"X-Endpoint-Token": TOKEN}, timeout=10)
        assert right.status_code == 200 and right.json()["predict_result"]["echo"] == 1
        assert process.get("/health").status_code == 200  # probes need no secret
    finally:
        process.stop()
    logs = process.output() + "".join(p.read_text() for p in (process.app_dir / "_cache" / "_logs").glob("*"))
    assert TOKEN not in logs


def test_an_unknown_or_support_endpoint_is_a_configuration_error(tmp_path):
    for name in ("nope", "helper"):
        process = started(tmp_path / name, wait_ready=False, extra_args=[name])
        try:
            assert process.proc.wait(30) == 2
            assert f"No endpoint '{name}'" in process.output() and "['echo']" in process.output()
        finally:
            process.stop()


def test_run_on_the_servers_own_port_keeps_its_deadline_and_queue_bound(tmp_path):
    """/run on a model server's port is answered in its event loop: 504 past REQUEST_TIMEOUT (the
    server goes on), 503 past MAX_QUEUE, and a client that leaves frees its place in the queue."""
    config = {"CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "MAX_QUEUE": 1,
                                            "REQUEST_TIMEOUT": 1}}}
    process = EndpointProcess(make_app(tmp_path, config, FILES)).start()
    try:
        url = f"{process.url}/run"
        late = requests.post(url, json={"VALUE": 1, "SLEEP": 2}, timeout=10)
        assert late.status_code == 504 and "REQUEST_TIMEOUT=1s" in late.json()["ERROR"]
        time.sleep(1.2)  # the worker finishes the late one
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda _: requests.post(url, json={"VALUE": 2, "SLEEP": 0.5}, timeout=10),
                                    range(3)))
        statuses = sorted(r.status_code for r in replies)
        assert statuses[0] == 200 and 503 in statuses  # one runs, one waits, the one past MAX_QUEUE is refused
        assert all(r.json()["error"]["type"] == "Overloaded" for r in replies if r.status_code == 503)
        # A client that leaves while queued: its place goes to the next one (else MAX_QUEUE 1 is full).
        def post(sock: socket.socket, body: bytes) -> None:
            sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

        with socket.create_connection(("127.0.0.1", process.port)) as busy:
            post(busy, b'{"VALUE": 3, "SLEEP": 0.8}')  # holds the one worker
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", process.port)) as leaver:
                post(leaver, b'{"VALUE": 4}')  # queued behind it
                time.sleep(0.2)
            time.sleep(0.1)
            queued = requests.post(url, json={"VALUE": 5}, timeout=10)
            assert queued.status_code == 200 and queued.json()["predict_result"]["echo"] == 5
        assert process.get("/health").json()["workers"]["queue"] == 0
    finally:
        process.stop()
    process.assert_nothing_left()


def test_a_stream_in_progress_ends_whole_when_the_server_drains(tmp_path):
    files = [FIXTURES / "endpoints" / "stream_model.py"]
    config = {"CONFIG_ENDPOINTS": {"stream": {"SERVER_CLASS": "stream_model", "NR_WORKERS": 1}}}
    process = EndpointProcess(make_app(tmp_path, config, files)).start(extra_args=["stream"])
    try:
        with requests.post(f"{process.url}/run", json={"N": 8, "GAP_MS": 150}, stream=True, timeout=20,
                           headers={"Accept": "application/x-ndjson"}) as reply:
            lines = reply.iter_lines()
            first = json.loads(next(lines))
            os.kill(process.proc.pid, signal.SIGTERM)  # while 7 items are still to come
            rest = [json.loads(line) for line in lines]
        assert first["i"] == 0 and [item["i"] for item in rest[:-1]] == list(range(1, 8))
        assert rest[-1]["END"]["items"] == 8
        assert process.proc.wait(15) == 0
    finally:
        process.stop()
    process.assert_nothing_left()
