"""Streamed answers through real processes: SSE and NDJSON framing, items as they are made,
collected answers for old clients, errors mid-stream, slow readers, and cancellation."""

from __future__ import annotations

import copy
import http.client
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from conftest import ECHO_CONFIG, FIXTURES, REPO, EndpointProcess, Gateway, make_app

STREAM_FILES = [FIXTURES / "endpoints" / name for name in ("stream_model.py", "stream_batch_model.py",
                                                          "echo_model.py")]


def stream_config(**endpoints: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"] = {
        "stream": {"SERVER_CLASS": "stream_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 5},
        "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1},
        **endpoints,
    }
    return config


class Stream:
    """One streamed answer read incrementally with http.client (chunked decoding included)."""

    def __init__(self, port: int, body: dict[str, Any], accept: str | None = "text/event-stream",
                 timeout: float = 15):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if accept:
            headers["Accept"] = accept
        self.conn.request("POST", "/run", json.dumps(body), headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}

    def events(self) -> list[tuple[str, dict[str, Any], float]]:
        """SSE events as (event name, data, arrival time), to the end of the answer."""
        events, name, data = [], "message", None
        while True:
            line = self.response.readline()
            if not line:
                return events
            line = line.rstrip(b"\n")
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = json.loads(line[6:])
            elif line == b"" and data is not None:
                events.append((name, data, time.time()))
                name, data = "message", None

    def next_line(self) -> bytes:
        return self.response.readline()

    def close(self) -> None:
        self.conn.sock.shutdown(socket.SHUT_RDWR) if self.conn.sock else None
        self.conn.close()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"not within {timeout}s: {what}")


def metric(gateway, name: str, **labels: str) -> float:
    text = gateway.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == want:
            return float(match.group(2))
    return 0.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    config = stream_config(
        sbatch={"SERVER_CLASS": "stream_batch_model", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 4,
                "MAX_BATCH_WAIT_MS": 100},
        single={"SERVER_CLASS": "stream_model", "NR_WORKERS": 1, "MAX_QUEUE": 4},
        impatient={"SERVER_CLASS": "stream_model", "NR_WORKERS": 2, "STREAM_IDLE_TIMEOUT": 0.5,
                   "STREAM_TIMEOUT": 1.5},
    )
    app = make_app(tmp_path_factory.mktemp("streaming"), config, STREAM_FILES)
    gw = Gateway(app).start()
    yield gw
    gw.stop()
    gw.assert_nothing_left()


def test_sse_items_arrive_as_they_are_made_and_the_end_carries_the_envelope(gateway):
    stream = Stream(gateway.port, {"SIGNATURE": "stream", "N": 5, "GAP_MS": 150})
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["transfer-encoding"] == "chunked"
    events = stream.events()
    stream.close()
    assert [name for name, _, _ in events] == ["message"] * 5 + ["end"]
    assert [data["i"] for _, data, _ in events[:5]] == [0, 1, 2, 3, 4]
    # The first item was read before the generator had made the last one.
    assert events[0][2] < events[4][1]["t"] - 0.3
    end = events[-1][1]
    assert end["items"] == 5 and "predict_result" not in end
    assert {"call_id", "signature", "worker_id", "time", "ver", "ver-lib"} <= set(end)
    assert end["signature"].split(".")[1] == "stream_model"


def test_sse_and_ndjson_framing_is_exact(gateway):
    raw = requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", "N": 2}, timeout=10,
                        headers={"Accept": "text/event-stream"}).content
    blocks = raw.split(b"\n\n")
    assert blocks[-1] == b"" and len(blocks) == 4
    assert re.fullmatch(rb'data: \{"i":0,"t":[0-9.]+,"pad":"","worker":\d\}', blocks[0])
    assert blocks[2].startswith(b'event: end\ndata: {"call_id":') and blocks[2].count(b"\n") == 1

    reply = requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", "N": 2}, timeout=10,
                          headers={"Accept": "application/x-ndjson"})
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    lines = reply.content.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [json.loads(line)["i"] for line in lines[:2]] == [0, 1]
    assert json.loads(lines[2])["END"]["items"] == 2


def test_stream_true_in_the_body_answers_sse(gateway):
    reply = requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", "N": 1, "STREAM": True}, timeout=10)
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert reply.text.startswith("data: {") and "event: end\n" in reply.text


def test_a_client_that_asks_for_no_stream_gets_the_items_collected(gateway):
    reply = gateway.run("stream", N=3)
    assert reply.status_code == 200
    body = reply.json()
    assert [item["i"] for item in body["predict_result"]] == [0, 1, 2]
    assert "call_id" in body and "time" in body
    # A plain value asked for as a stream is a stream of one item.
    plain = Stream(gateway.port, {"SIGNATURE": "stream", "PLAIN": 7}).events()
    assert [(name, data) for name, data, _ in plain[:1]] == [("message", {"plain": 7})]
    assert plain[1][0] == "end" and plain[1][1]["items"] == 1


def test_an_error_after_the_first_item_ends_the_stream_with_an_error_event(gateway):
    stream = Stream(gateway.port, {"SIGNATURE": "stream", "N": 5, "FAIL_AT": 2})
    events = stream.events()
    stream.close()
    assert [name for name, _, _ in events] == ["message", "message", "error"]
    error = events[-1][1]
    assert error["error"]["type"] == "ModelError"
    assert "failed at item 2" in error["error"]["message"]
    assert error["error"]["request_id"] == stream.headers["x-request-id"]
    lines = requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", "N": 5, "FAIL_AT": 1}, timeout=10,
                          headers={"Accept": "application/x-ndjson"}).content.splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["error"]["type"] == "ModelError"
    assert "RuntimeError: failed at item 2" in gateway.output() or _server_log_has(gateway, "failed at item 2")


def _server_log_has(gateway, text: str) -> bool:
    return any(text in path.read_text(errors="replace") for path in Path(gateway.app_dir).rglob("*.txt")
               if path.is_file())


def test_an_error_before_the_first_item_is_an_ordinary_json_error(gateway):
    for body, status, kind in (({"FAIL_AT": 0}, 500, "ModelError"), ({"BAD": True}, 400, "InvalidInput")):
        reply = requests.post(gateway.url + "/run", json={"SIGNATURE": "stream", **body}, timeout=10,
                              headers={"Accept": "text/event-stream"})
        assert reply.status_code == status, reply.text
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.json()["error"]["type"] == kind
    unknown = requests.post(gateway.url + "/run", json={"SIGNATURE": "nope"}, timeout=10,
                            headers={"Accept": "text/event-stream"})
    assert unknown.status_code == 404


def test_a_stream_silent_past_stream_idle_timeout_or_too_long_ends_with_a_timeout(gateway):
    started = time.monotonic()
    events = Stream(gateway.port, {"SIGNATURE": "impatient", "N": 3, "GAP_MS": 2000}).events()
    assert [name for name, _, _ in events] == ["message", "error"]
    assert events[-1][1]["error"]["type"] == "Timeout"
    assert "STREAM_IDLE_TIMEOUT=0.5" in events[-1][1]["error"]["message"]
    assert time.monotonic() - started < 2.0
    events = Stream(gateway.port, {"SIGNATURE": "impatient", "N": 100, "GAP_MS": 200}).events()
    assert events[-1][0] == "error" and "STREAM_TIMEOUT=1.5" in events[-1][1]["error"]["message"]
    assert 4 <= len(events) <= 10


def test_a_slow_reader_holds_back_its_own_stream_only(gateway):
    gateway_rss = psutil.Process(gateway.proc.pid).memory_info().rss
    # 400 items of 100 KB: 40 MB that the client does not read for a while.
    slow = Stream(gateway.port, {"SIGNATURE": "stream", "N": 400, "PAD": 100_000})
    assert slow.status == 200
    time.sleep(1.0)
    started = time.monotonic()
    for index in range(20):  # the other worker, and other endpoints, answer at once meanwhile
        assert gateway.run("stream", N=1).status_code == 200
        assert gateway.run("echo", VALUE=index).status_code == 200
    assert time.monotonic() - started < 5
    grown = psutil.Process(gateway.proc.pid).memory_info().rss - gateway_rss
    assert grown < 20 * 1024 * 1024, f"gateway grew by {grown / 1e6:.0f} MB for a client that does not read"
    events = slow.events()  # now read it all: nothing was lost or reordered
    slow.close()
    assert [data["i"] for _, data, _ in events[:-1]] == list(range(400))
    assert events[-1][0] == "end"


def test_a_client_that_leaves_closes_the_running_generator_and_drops_its_queued_request(gateway, tmp_path):
    running, queued = tmp_path / "running", tmp_path / "queued"
    before = {stage: metric(gateway, "bis_cancelled_total", signature="single", stage=stage)
              for stage in ("queued", "running")}
    first = Stream(gateway.port, {"SIGNATURE": "single", "N": 100, "GAP_MS": 100, "MARK": str(running)})
    assert first.next_line().startswith(b"data: ")
    second = Stream.__new__(Stream)  # queued behind the only worker: its answer never starts
    second.conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    second.conn.request("POST", "/run", json.dumps({"SIGNATURE": "single", "N": 3, "MARK": str(queued)}),
                        {"Accept": "text/event-stream", "Content-Type": "application/json"})
    time.sleep(0.3)
    second.close()
    time.sleep(0.3)
    left = time.monotonic()
    first.close()
    wait_for(lambda: running.exists() and running.read_text() == "closed", 1.5, "generator closed")
    assert time.monotonic() - left < 1.0 + 0.3
    # The worker is free: the next request is served at once, and the queued one never ran.
    assert gateway.run("single", N=2).status_code == 200
    assert not queued.exists()
    wait_for(lambda: metric(gateway, "bis_cancelled_total", signature="single", stage="running")
             == before["running"] + 1, 5, "running cancel counted")
    assert metric(gateway, "bis_cancelled_total", signature="single", stage="queued") == before["queued"] + 1
    assert metric(gateway, "bis_active_streams", signature="single") == 0


def test_batching_and_streaming_give_every_request_its_own_items_and_cancel_one_slot(gateway, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    mark = tmp_path / "slots"

    def read(value: int) -> list[tuple[str, dict[str, Any], float]]:
        body = {"SIGNATURE": "sbatch", "VALUE": value, "N": value + 2, "WAIT": value, "GAP_MS": 30}
        return Stream(gateway.port, body).events()

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(read, range(3)))
    for value, events in enumerate(results):
        assert [(d["value"], d["n"]) for _, d, _ in events[:-1]] == [(value, n) for n in range(value + 2)]
        assert events[-1][0] == "end" and events[-1][1]["items"] == value + 2
    assert max(d["batch"] for events in results for _, d, _ in events[:-1]) > 1

    # One client of a batch leaves: its slot is reported to the generator, the others finish.
    with ThreadPoolExecutor(2) as pool:
        stay = pool.submit(read, 10)
        time.sleep(0.02)
        leaver = Stream(gateway.port, {"SIGNATURE": "sbatch", "VALUE": 1, "N": 1000, "GAP_MS": 30,
                                       "MARK": str(mark)})
        assert leaver.next_line().startswith(b"data: ")
        leaver.close()
        events = stay.result(timeout=20)
    assert [d["n"] for _, d, _ in events[:-1]] == list(range(12))
    wait_for(lambda: mark.exists() and json.loads(mark.read_text()), 5, "cancelled slot reported")


def test_a_model_servers_own_port_streams_too(tmp_path):
    server = EndpointProcess(make_app(tmp_path, stream_config(), STREAM_FILES)).start(extra_args=["stream"])
    try:
        events = Stream(server.port, {"SIGNATURE": "stream", "N": 3, "GAP_MS": 50}).events()
        assert [name for name, _, _ in events] == ["message"] * 3 + ["end"]
        assert events[-1][1]["items"] == 3
        asked_in_body = Stream(server.port, {"SIGNATURE": "stream", "N": 2, "STREAM": True}, accept=None).events()
        assert [name for name, _, _ in asked_in_body] == ["message"] * 2 + ["end"]
        lines = requests.post(f"{server.url}/run", json={"SIGNATURE": "stream", "N": 2, "FAIL_AT": 1},
                              headers={"Accept": "application/x-ndjson"}, timeout=10).content.splitlines()
        assert json.loads(lines[0])["i"] == 0 and json.loads(lines[1])["error"]["type"] == "ModelError"
    finally:
        server.stop()
    server.assert_nothing_left()


def test_many_disconnects_under_load_leave_no_busy_worker_and_no_open_connection(gateway):
    server_pid = gateway.servers()["stream"]["PID"]
    gateway_fds = psutil.Process(gateway.proc.pid).num_fds()
    for _ in range(30):
        stream = Stream(gateway.port, {"SIGNATURE": "stream", "N": 100, "GAP_MS": 20})
        stream.next_line()
        stream.close()
    port = gateway.servers()["stream"]["PORT"]
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["workers"]["busy"] == 0,
             3, "every worker free again")
    wait_for(lambda: psutil.Process(gateway.proc.pid).num_fds() <= gateway_fds + 2, 5, "gateway sockets closed")
    assert psutil.Process(server_pid).is_running()
    assert gateway.run("stream", N=1).status_code == 200


def test_the_readme_text_generator_example_streams_its_words(gateway_factory):
    example = REPO / "examples" / "text_stream"
    config = json.loads((example / "config_gateway.txt").read_text())
    gateway = gateway_factory(config, sorted((example / "endpoints").glob("*.py")))
    events = Stream(gateway.port, {"SIGNATURE": "text_generator", "PROMPT": "hello", "MAX_WORDS": 5}).events()
    assert [data["index"] for _, data, _ in events[:-1]] == [0, 1, 2, 3, 4]
    assert all(isinstance(data["token"], str) for _, data, _ in events[:-1])
    assert events[-1][0] == "end"
    collected = gateway.run("text_generator", PROMPT="hello", MAX_WORDS=5).json()["predict_result"]
    assert collected == [data for _, data, _ in events[:-1]]  # the same prompt gives the same words
    assert gateway.run("text_generator", PROMPT="").status_code == 400


def test_a_batch_stream_longer_than_its_credit_and_backlog_ends(gateway):
    """Items kept for a slow client of a batch still go out, and then the end, after the job has
    finished (the end waits for the client's credit)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(value: int) -> list[tuple[str, dict[str, Any], float]]:
        stream = Stream(gateway.port, {"SIGNATURE": "sbatch", "VALUE": value, "N": 200}, timeout=10)
        time.sleep(0.3)  # the generator runs far ahead of this client meanwhile
        return stream.events()

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(read, range(2)))
    for value, events in enumerate(results):
        assert [(d["value"], d["n"]) for _, d, _ in events[:-1]] == [(value, n) for n in range(200)]
        assert events[-1][0] == "end"
