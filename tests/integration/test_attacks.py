"""Hostile clients, through real processes: each attack of issue 22, bounded in count and time, and
what must hold meanwhile (the other clients served at once, no server recycled, memory bounded)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import requests
from conftest import FIXTURES, TOKEN, Gateway, make_app

FILES = [FIXTURES / "endpoints" / "echo_model.py", FIXTURES / "endpoints" / "openai_model.py"]
CONFIG = {
    "MAX_BODY_MB": 16,
    "MAX_JSON_VALUES": 1_000_000,
    "SHUTDOWN_GRACE": 3,
    "CONFIG_ENDPOINTS": {
        "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2},
        "target": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 10},
        "chat": {"SERVER_CLASS": "openai_model", "NR_WORKERS": 2, "OPENAI": "chat", "REQUEST_TIMEOUT": 10},
    },
}
EIGHT_MB = 8 * 1024 * 1024
_UNIT = b"[[[[[[[[[[]]]]]]]]]],"  # 10 arrays in 21 bytes: the costliest body per byte to parse


def containers(head: bytes, tail: bytes = b"") -> bytes:
    """An 8 MB body of tiny nested arrays between ``head`` and ``tail``."""
    count = (EIGHT_MB - len(head) - len(tail) - 16) // len(_UNIT)
    return head + b'"x": [' + _UNIT * count + b"[]]" + tail + b"}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gateway = Gateway(make_app(tmp_path_factory.mktemp("attacks"), CONFIG, FILES)).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def exchange(port: int, request: bytes, timeout: float = 30) -> int:
    """Send one request on a new connection; the status of its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed without an answer")
            head += chunk
    return int(head.split()[1])


def post_head(length: int, path: bytes = b"/run") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        path, length)


@contextmanager
def attacking(port: int, body: bytes, connections: int, path: bytes = b"/run") -> Iterator[list[int]]:
    """``connections`` clients sending ``body`` again and again until the block ends (each reads
    its answer's first bytes, then closes); the statuses."""
    stop, statuses = threading.Event(), []
    request = post_head(len(body), path) + body

    def attacker() -> None:
        while not stop.is_set():
            try:
                statuses.append(exchange(port, request))
            except OSError:
                statuses.append(0)

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def latencies(gateway: Gateway, seconds: float) -> list[float]:
    """Times of /run on the endpoint nobody attacks, one after the other for ``seconds``."""
    times, deadline = [], time.monotonic() + seconds
    with requests.Session() as session:
        while time.monotonic() < deadline:
            started = time.monotonic()
            answer = session.post(gateway.url + "/run", json={"SIGNATURE": "echo", "VALUE": 1}, timeout=30)
            times.append(time.monotonic() - started)
            assert answer.status_code == 200, answer.text
    return times


def p99(times: list[float]) -> float:
    return sorted(times)[max(0, int(len(times) * 0.99) - 1)]


@pytest.mark.parametrize("body", [
    containers(b'{"SIGNATURE": "nope", '),
    containers(b"{", b', "SIGNATURE": "nope"'),
    containers(b"{"),
], ids=["unknown-first", "unknown-last", "none"])
def test_container_bodies_that_route_nowhere_cost_the_gateway_nothing(gateway, body):
    """Two clients resending 8 MB of tiny arrays that name no endpoint: the gateway answers them
    from the body's first SIGNATURE without parsing it, and everyone else at once."""
    with attacking(gateway.port, body, connections=2) as statuses:
        time.sleep(0.5)
        times = latencies(gateway, 3)
    assert statuses and set(statuses) <= {400, 404}, sorted(set(statuses))
    assert p99(times) < 0.5, f"p99 {p99(times) * 1000:.0f} ms over {len(times)} requests"


def test_container_bodies_to_a_real_endpoint_are_refused_and_it_is_never_recycled(gateway):
    target = gateway.servers()["target"]
    with attacking(gateway.port, containers(b'{"SIGNATURE": "target", '), connections=2) as statuses:
        time.sleep(0.5)
        times = latencies(gateway, 3)
        legal = gateway.run("target", VALUE="still served")
        peak = rss_mb(target["PID"])
    assert legal.status_code == 200, legal.text
    assert statuses and set(statuses) == {413}, sorted(set(statuses))
    assert p99(times) < 0.5, f"p99 {p99(times) * 1000:.0f} ms over {len(times)} requests"
    after = gateway.servers()["target"]
    assert (after["PID"], after["RESTARTS"], after["HEALTH_FAILURES"]) == (target["PID"], 0, 0)
    assert peak < 300, f"the attacked server grew to {peak:.0f} MB"
    refused = requests.post(gateway.url + "/run", data=containers(b'{"SIGNATURE": "target", '), timeout=30).json()
    assert "MAX_JSON_CONTAINERS=500000" in refused["ERROR"]
    assert "request bodies past the JSON bounds" in gateway.output()  # said, at most every 10 s


def test_openai_routes_refuse_container_bodies_and_abandoned_streams_free_their_workers(gateway):
    """OpenAI's chat route tried as /run is: 8 MB of tiny arrays naming an OpenAI model (refused by
    its server's JSON bounds, everyone else served at once), then clients that open long streams
    and leave after their first chunk (each generator closed: the two workers serve on)."""
    chat = gateway.servers()["chat"]
    route = b"/v1/chat/completions"
    with attacking(gateway.port, containers(b'{"model": "chat", '), connections=2, path=route) as statuses:
        time.sleep(0.5)
        times = latencies(gateway, 3)
    assert statuses and set(statuses) == {413}, sorted(set(statuses))
    assert p99(times) < 0.5, f"p99 {p99(times) * 1000:.0f} ms over {len(times)} requests"
    stream = json.dumps({"model": "chat", "stream": True,
                         "messages": [{"role": "user", "content": "count 100000 10"}]}).encode()
    with attacking(gateway.port, stream, connections=4, path=route) as statuses:
        time.sleep(2)
    assert len(statuses) > 8 and set(statuses) <= {200, 503}, sorted(set(statuses))
    body = {"model": "chat", "messages": [{"role": "user", "content": "echo served"}]}
    answer = requests.post(gateway.url + "/v1/chat/completions", json=body, timeout=5)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == " served"
    after = gateway.servers()["chat"]
    assert (after["PID"], after["RESTARTS"], after["HEALTH_FAILURES"]) == (chat["PID"], 0, 0)


def test_bodies_declared_large_cost_memory_only_as_their_bytes_arrive(gateway):
    """200 clients declare 8 MB and send one byte, to the gateway and to a model server's own port:
    nothing is allocated for what was only declared, and all is given back when they leave."""
    target = gateway.servers()["target"]
    for port, pid in ((gateway.port, gateway.proc.pid), (target["PORT"], target["PID"])):
        idle = rss_mb(pid)
        sockets = []
        try:
            for _ in range(200):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(post_head(EIGHT_MB) + b"{")
                sockets.append(sock)
            time.sleep(0.5)
            held = rss_mb(pid)
        finally:
            for sock in sockets:
                sock.close()
        assert held - idle < 32, f"{held - idle:.0f} MB more with 200 bodies of 1 byte declared 8 MB"
        deadline = time.monotonic() + 5
        while rss_mb(pid) > idle * 1.1 + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rss_mb(pid) <= idle * 1.1 + 5, f"{rss_mb(pid):.0f} MB 5 s after, {idle:.0f} MB idle"
    assert gateway.run("target", VALUE=1).status_code == 200


def test_idle_keep_alive_connections_never_lock_new_clients_out(tmp_path):
    gateway = Gateway(make_app(tmp_path, {**CONFIG, "MAX_CONNECTIONS": 300}, FILES)).start()
    held: list[socket.socket] = []
    try:
        for _ in range(400):  # more than the table holds, each idle after one answer
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            held.append(sock)
        for sock in held:
            try:
                sock.recv(4096)
            except OSError:
                pass
        served = 0
        for _ in range(50):
            with requests.Session() as session:
                served += session.post(gateway.url + "/run", json={"SIGNATURE": "echo", "VALUE": 1},
                                       timeout=5).status_code == 200
        assert served == 50
    finally:
        for sock in held:
            sock.close()
        gateway.stop()
    gateway.assert_nothing_left()


@pytest.fixture
def short_path() -> Iterator[Path]:
    """A folder whose socket paths fit a Unix socket address, so the sockets and secrets stay in
    ``_cache/_run/sockets`` (under a long path, such as pytest-xdist's, they go to a temporary
    folder)."""
    folder = Path(tempfile.mkdtemp(prefix="bis-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_gateways_model_server_serves_that_gateway_only(short_path):
    env = {"BIS_ADMIN_TOKEN": "admin-token-in-the-environment", "BIS_ENDPOINT_TOKEN": "remote-hop-secret-1234"}
    gateway = Gateway(make_app(short_path, CONFIG, FILES), env=env, token=None).start()
    try:
        target = gateway.servers()["target"]
        direct = f"http://127.0.0.1:{target['PORT']}"
        refused = requests.post(direct + "/run", json={"SIGNATURE": "target", "VALUE": 1}, timeout=5)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "Unauthorized"
        for path in ("/stats", "/notifications"):
            assert requests.get(direct + path, timeout=5).status_code == 401
        guessed = requests.get(direct + "/stats", headers={"X-Endpoint-Token": env["BIS_ENDPOINT_TOKEN"]}, timeout=5)
        assert guessed.status_code == 401  # not the gateway's own secret either
        assert requests.get(direct + "/health", timeout=5).status_code == 200  # probes stay open
        secret_file = gateway.app_dir / "_cache" / "_run" / "sockets" / f"{target['PORT']}.secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600  # this user's, to call the server directly
        mine = requests.get(direct + "/stats", headers={"X-Endpoint-Token": secret_file.read_text()}, timeout=5)
        assert mine.status_code == 200
        assert gateway.run("target", VALUE=1).status_code == 200  # the gateway has its secret
        assert 'bis_workers{' in requests.get(gateway.url + "/metrics", timeout=5).text  # and scrapes /stats
        for pid in (target["PID"], gateway.servers()["echo"]["PID"]):
            environ = open(f"/proc/{pid}/environ", "rb").read()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            for secret in env.values():
                assert secret.encode() not in environ and secret.encode() not in cmdline
            assert b"BIS_ADMIN_TOKEN" not in environ and b"BIS_ENDPOINT_TOKEN" not in environ
    finally:
        gateway.stop()
    gateway.assert_nothing_left()
    assert not list((gateway.app_dir / "_cache" / "_run" / "sockets").glob("*.secret"))  # gone with them


def test_notifications_take_the_admin_token_when_protected(tmp_path, gateway):
    assert gateway.get("/notifications", params={"SIGNATURE": "echo"}).status_code == 200  # open by default
    protected = Gateway(make_app(tmp_path, {**CONFIG, "PROTECT_NOTIFICATIONS": True}, FILES))
    protected.start(extra_args=["--host", "0.0.0.0"])
    try:
        refused = requests.get(protected.url + "/notifications", params={"SIGNATURE": "echo"}, timeout=5)
        assert refused.status_code == 401
        allowed = requests.get(protected.url + "/notifications", params={"SIGNATURE": "echo"},
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert allowed.status_code == 200, allowed.text
        assert "PROTECT_NOTIFICATIONS" not in protected.output()
    finally:
        protected.stop()
    protected.assert_nothing_left()
    warned = Gateway(make_app(tmp_path / "open", CONFIG, FILES)).start(extra_args=["--host", "0.0.0.0"])
    try:
        assert "/notifications is open to every client" in warned.output()
    finally:
        warned.stop()
    warned.assert_nothing_left()


@pytest.mark.parametrize(("body", "status", "words"), [
    (b'{"SIGNATURE": "target", "VALUE": 1e400}', 400, "field 'VALUE': a number is out of range"),
    (b'{"SIGNATURE": "target", "VALUE": "\\ud800"}', 400, "field 'VALUE': a string holds an unpaired"),
    (b'{"SIGNATURE": "target", "VALUE": ' + b"[" * 300 + b"]" * 300 + b"}", 400, "MAX_JSON_DEPTH=256"),
], ids=["1e400", "surrogate", "depth"])
def test_what_json_has_not_is_a_400_naming_the_field(gateway, body, status, words):
    answer = requests.post(gateway.url + "/run", data=body, timeout=10)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["ERROR"]


def test_an_undecodable_admin_token_is_a_401_and_no_traceback(gateway):
    for payload in (b'{"SIGNATURE": "SAFE_KILL_SERVER_CMD", "TOKEN": "\\ud800"}', b'{"TOKEN": '):
        answer = requests.post(gateway.url + "/shutdown", data=payload, timeout=5)
        assert answer.status_code == 401, answer.text
    header = requests.post(gateway.url + "/kill_server", json={"SIGNATURE": "echo"},
                           headers={"Authorization": "Bearer \xe9\xff"}, timeout=5)
    assert header.status_code == 401
    assert gateway.run("echo", VALUE=1).status_code == 200
    assert "Traceback" not in gateway.output()


def test_v2_bytes_elements_are_bounded_before_any_is_made(gateway):
    count = 2_000_000
    header = json.dumps({"inputs": [{"name": "b", "datatype": "BYTES", "shape": [count],
                                     "parameters": {"binary_data_size": 4 * count}}]}).encode()
    target = gateway.servers()["target"]
    before = rss_mb(target["PID"])
    started = time.monotonic()
    answer = requests.post(gateway.url + "/v2/models/target/infer", data=header + struct.pack("<I", 0) * count,
                           headers={"Inference-Header-Content-Length": str(len(header))}, timeout=30)
    assert answer.status_code == 413 and "MAX_JSON_VALUES=1000000" in answer.json()["error"], answer.text
    assert time.monotonic() - started < 3
    assert rss_mb(target["PID"]) - before < 50


def test_a_log_folder_that_cannot_be_written_is_said_once_and_logging_goes_on(tmp_path):
    app = make_app(tmp_path, CONFIG, FILES)
    (app / "_cache").mkdir()
    (app / "_cache" / "_logs").write_text("a file where the log folder should be\n")
    gateway = Gateway(app).start()
    try:
        assert gateway.run("echo", VALUE=1).status_code == 200
        output = gateway.output()
        assert "cannot write the log file" in output
        assert "Logging error" not in output and "Traceback" not in output
        assert output.count("cannot write the log file") <= 1 + len(CONFIG["CONFIG_ENDPOINTS"])  # once a process
        assert "Gateway listening on" in output  # the console goes on
    finally:
        gateway.stop()
    gateway.assert_nothing_left()


def test_no_secret_leaves_in_a_childs_environment(tmp_path):
    from basic_inference_server.gateway.supervision.children import SECRET_VARIABLES, child_env

    os.environ.update({name: "secret" for name in SECRET_VARIABLES})
    try:
        assert not set(SECRET_VARIABLES) & set(child_env(tmp_path))
    finally:
        for name in SECRET_VARIABLES:
            os.environ.pop(name, None)
