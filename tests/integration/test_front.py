"""The gateway's HTTP front on a real gateway: malformed and slow clients, limits, keep-alive,
pipelining, 100-continue, and many idle connections that must not stop anyone else."""

from __future__ import annotations

import json
import re
import resource
import socket
import threading
import time
import weakref

import psutil
import pytest
import requests
from conftest import Gateway, make_app, module_gateway

FRONT_CONFIG = {
    "MAX_BODY_MB": 0.25,
    "HEADER_TIMEOUT": 1,
    "BODY_TIMEOUT": 1,
    "KEEPALIVE_TIMEOUT": 2,
    "MAX_CONNECTIONS": 3000,
    "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2}},
}
RUN = b'{"SIGNATURE": "echo", "VALUE": "hi"}'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    yield from module_gateway(tmp_path_factory, "front", FRONT_CONFIG)


def connect(gateway, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)


_LEFT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bytes read past an answer (pipelining)


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer from ``sock`` (Content-Length framed); what follows it is kept for the next call."""
    data = _LEFT.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        rest += sock.recv(65536)
    _LEFT[sock] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def post(body: bytes = RUN, extra: bytes = b"") -> bytes:
    return (b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), extra)) + body


def assert_json_error(status: int, headers: dict, body: bytes, expected: int, error_type: str) -> dict:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["error"]["type"] == error_type and data["ERROR"]
    return data


def assert_serving(gateway):
    response = gateway.run("echo", VALUE="still")
    assert response.status_code == 200, response.text


def test_malformed_http_is_a_json_400_and_closes(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        status, headers, body = read_answer(sock)
        assert_json_error(status, headers, body, 400, "BadRequest")
        assert closed_by_peer(sock, 2)
    assert_serving(gateway)


def test_a_half_sent_head_gets_408_after_the_header_timeout(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        status, headers, body = read_answer(sock)
        waited = time.monotonic() - started
    assert_json_error(status, headers, body, 408, "RequestTimeout")
    assert 0.5 < waited < 5
    assert_serving(gateway)


def test_a_body_that_stops_arriving_gets_408(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"SIGN")
        status, headers, body = read_answer(sock)
    assert_json_error(status, headers, body, 408, "RequestTimeout")
    assert b"body" in body


def test_a_silent_connection_and_an_idle_keep_alive_are_closed_quietly(gateway):
    with connect(gateway) as silent, connect(gateway) as idle:
        idle.sendall(post())
        assert read_answer(idle)[0] == 200
        assert closed_by_peer(silent, 4)  # HEADER_TIMEOUT 1 s: nothing was sent, nothing is answered
        assert closed_by_peer(idle, 5)  # KEEPALIVE_TIMEOUT 2 s after its answer


def test_too_many_headers_and_too_large_a_head_are_431(gateway):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    with connect(gateway) as sock:
        sock.sendall(post(extra=many))
        assert_json_error(*read_answer(sock), 431, "HeadersTooLarge")
    with connect(gateway) as sock:
        sock.sendall(post(extra=b"X-Big: " + b"a" * 70_000 + b"\r\n"))
        assert_json_error(*read_answer(sock), 431, "HeadersTooLarge")
    assert_serving(gateway)


def test_declared_body_over_the_limit_is_413_before_it_is_sent(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
        assert_json_error(*read_answer(sock), 413, "PayloadTooLarge")


def test_pipelined_requests_are_answered_in_order(gateway):
    bodies = [json.dumps({"SIGNATURE": "echo", "VALUE": f"n{i}"}).encode() for i in range(5)]
    with connect(gateway) as sock:
        sock.sendall(b"".join(post(body) for body in bodies) + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        answers = [read_answer(sock) for _ in range(6)]
    texts = [json.loads(body)["predict_result"]["echo"] for _, _, body in answers[:5]]
    assert texts == [f"n{i}" for i in range(5)]
    assert json.loads(answers[5][2])["status"] == "ok"


def test_expect_100_continue(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(RUN))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(RUN)
        assert read_answer(sock)[0] == 200


def test_http_1_0_without_keep_alive_is_closed_after_its_answer(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        status, headers, _ = read_answer(sock)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_peer(sock, 2)


def test_get_on_run_is_405_with_allow(gateway):
    response = requests.get(gateway.url + "/run", timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert response.json()["error"]["type"] == "MethodNotAllowed"


def test_thousands_of_half_open_connections_do_not_stop_other_clients(gateway):
    """2,500 clients that each sent half a request head: everyone else is still answered at once,
    and the gateway's memory stays small."""
    count = 2500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < count + 200:
        pytest.skip(f"open-file limit {hard} is below {count + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    idle: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", gateway.port))
            except BlockingIOError:
                pass
            idle.append(sock)
        time.sleep(0.2)
        for sock in idle:
            try:
                sock.send(b"POST /run HTTP/1.1\r\nHost: t\r\n")
            except (BlockingIOError, OSError):
                pass
        with requests.Session() as session:
            for _ in range(50):
                response = session.post(gateway.url + "/run", data=RUN, timeout=2)
                assert response.status_code == 200
        rss_mb = psutil.Process(gateway.proc.pid).memory_info().rss / 2**20
        assert rss_mb < 150, f"gateway RSS {rss_mb:.0f} MB with {count} half-open connections"
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert_serving(gateway)


def test_past_max_connections_the_longest_idle_make_room_and_busy_ones_are_kept(tmp_path):
    gateway = Gateway(make_app(tmp_path, {**FRONT_CONFIG, "MAX_CONNECTIONS": 10, "HEADER_TIMEOUT": 30})).start()
    try:
        idle = [connect(gateway) for _ in range(10)]
        for sock in idle:  # each served once, then idle on keep-alive, the first the longest
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_answer(sock)[0] == 200
        newcomers = [requests.Session() for _ in range(5)]
        for number, session in enumerate(newcomers):  # each is served: the longest idle make room, oldest first
            assert session.post(gateway.url + "/run", data=RUN, timeout=5).status_code == 200
            assert closed_by_peer(idle[number], within=2)
        for session in newcomers:
            session.close()
        for sock in idle[6:]:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_answer(sock)[0] == 200  # the newer ones still work
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        busy = [connect(gateway) for _ in range(10)]
        for sock in busy:  # in the middle of a request: never closed to make room
            sock.sendall(b"POST /run HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.3)
        with connect(gateway) as extra:
            status, headers, body = read_answer(extra)
        assert_json_error(status, headers, body, 503, "Overloaded")
        for sock in busy:
            sock.close()
        time.sleep(0.3)
        assert_serving(gateway)
    finally:
        gateway.stop()
        gateway.assert_nothing_left()


def test_a_request_whose_client_left_is_not_run(gateway_factory):
    """One worker busy for a while; a second request queued behind it, whose client then hangs
    up: the model server skips it (it never runs) and the next request takes its place."""
    gateway = gateway_factory({"CONFIG_ENDPOINTS": {"slow": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1,
                                                             "MAX_QUEUE": 1}}})
    def executed() -> int:
        metrics = requests.get(gateway.url + "/metrics", timeout=5).text
        found = re.search(r'^bis_model_duration_seconds_count\{[^}]*"slow"[^}]*\} (\S+)$', metrics, re.M)
        return int(float(found.group(1))) if found else 0

    before = executed()
    with requests.Session() as first_client:
        first = threading.Thread(target=lambda: first_client.post(
            gateway.url + "/run", json={"SIGNATURE": "slow", "VALUE": "a", "SLEEP": 1.5}, timeout=10))
        first.start()
        time.sleep(0.3)
        with connect(gateway) as leaving:
            leaving.sendall(post(json.dumps({"SIGNATURE": "slow", "VALUE": "b", "SLEEP": 3}).encode()))
            time.sleep(0.3)  # queued behind the first one
        time.sleep(0.3)  # the gateway saw the client go and cancelled it
        third = requests.post(gateway.url + "/run", json={"SIGNATURE": "slow", "VALUE": "c"}, timeout=10)
        first.join(10)
    assert third.status_code == 200, third.text  # MAX_QUEUE 1: only free because "b" left the queue
    assert executed() - before == 2  # "a" and "c"; "b" never ran
    metrics = requests.get(gateway.url + "/metrics", timeout=5).text
    assert 'bis_requests_total{code="499",signature="slow"} 1.0' in metrics
