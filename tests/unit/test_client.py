"""The Python client and ``bis`` against a scripted HTTP server: error mapping, retry policy, streams."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from basic_inference_server.client import (
    BadInput,
    Client,
    ClientError,
    ConnectionFailed,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    UnknownSignature,
    cli,
    cliargs,
)
from basic_inference_server.client.render import servers_text

ANSWER = {"predict_result": {"y": 7}, "call_id": 1, "time": "2026-01-01 00:00:00"}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: dict(ANSWER))
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # A streamed answer (chunked NDJSON) instead of ``body``: JSON values are written as lines,
    # bytes as they are, an Event is waited for (5 s at most) and a float is slept.
    lines: list[Any] | None = None


def error(status: int, error_type: str, message: str = "went wrong", **headers: str) -> Reply:
    return Reply(status, {"ERROR": message, "error": {"type": error_type, "message": message}}, headers)


class Stub:
    """A keep-alive HTTP server on a free loopback port; each request gets the next scripted
    reply (the last one repeats) and is recorded."""

    def __init__(self, *replies: Reply):
        self.replies = list(replies) or [Reply()]
        self.received: list[dict[str, Any]] = []
        self.gates: list[bool] = []  # per Event of a stream: whether it was set in time
        self.gone = threading.Event()  # a stream could not be written: its client closed the connection
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5  # idle keep-alive connections end with the test

            def do_GET(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.answer()

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.received.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "json": json.loads(body) if body else None, "port": self.client_address[1]})
                reply = stub.replies.pop(0) if len(stub.replies) > 1 else stub.replies[0]
                time.sleep(reply.delay)
                if reply.lines is not None:
                    self.stream(reply)
                    return
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    for key, value in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (read timeout)

            def stream(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for key, value in {"Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked",
                                   **reply.headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    for line in reply.lines:
                        if isinstance(line, threading.Event):
                            stub.gates.append(line.wait(5))
                        elif isinstance(line, float):
                            time.sleep(line)
                        else:
                            data = line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
                            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    stub.gone.set()
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.server_bind()  # the port is ours; connections are refused until listen()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def listen(self) -> None:
        self.server.server_activate()
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Any]:
    """``stub(*replies, listen=True)`` -> a listening Stub, closed after the test."""
    stubs: list[Stub] = []

    def make(*replies: Reply, listen: bool = True) -> Stub:
        server = Stub(*replies)
        stubs.append(server)
        if listen:
            server.listen()
        return server

    yield make
    for server in stubs:
        server.close()


def client_for(url: str, sleeps: list[float] | None = None, **kwargs: Any) -> Client:
    kwargs.setdefault("timeout", (2.0, 5.0))
    client = Client(url, **kwargs)
    if sleeps is not None:
        def record(seconds: float) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)
        client._sleep = record
    return client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- requests -----------------------------------------------------------------------------------
def test_run_posts_signature_and_inputs_and_returns_the_answer(stub):
    server = stub(Reply())
    with client_for(server.url) as client:
        assert client.run("model", INPUT_VALUE=3, VECTOR=np.arange(3), signature="kw") == ANSWER
    [request] = server.received
    assert (request["method"], request["path"]) == ("POST", "/run")
    assert request["json"] == {"SIGNATURE": "model", "INPUT_VALUE": 3, "VECTOR": [0, 1, 2], "signature": "kw"}
    assert request["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in request["headers"]  # the admin token goes to admin routes only


def test_calls_reuse_one_keep_alive_connection(stub):
    server = stub(Reply())
    with client_for(server.url) as client:
        client.run("model", X=1)
        client.list_servers()
        client.system_status()
    assert [r["path"] for r in server.received] == ["/run", "/list_servers", "/system_status"]
    assert len({r["port"] for r in server.received}) == 1


def test_shutdown_sends_the_token_as_bearer(stub):
    server = stub(Reply(body={"MESSAGE": "OK. Shutting down"}))
    with client_for(server.url, token="secret-token") as client:
        assert client.shutdown()["MESSAGE"] == "OK. Shutting down"
    [request] = server.received
    assert request["headers"]["Authorization"] == "Bearer secret-token"
    assert request["json"] == {"SIGNATURE": "SAFE_KILL_SERVER_CMD"}


def test_notifications_of_one_endpoint_or_of_every_ready_one(stub):
    servers = {"AVAIL_SERVERS": {"a": {"STATE": "READY"}, "b": {"STATE": "FAILED"}, "c": {"STATE": "STARTING"},
                                 "c#2": {"STATE": "READY"}}}
    server = stub(Reply(body={"1": ["x"]}), Reply(body=servers), Reply(body={"GENERAL": []}),
                  Reply(body={"2": ["y"]}))
    with client_for(server.url) as client:
        assert client.notifications("a") == {"1": ["x"]}
        assert client.notifications() == {"a": {"GENERAL": []}, "c": {"2": ["y"]}}
    assert [(r["path"], r["json"]) for r in server.received] == [
        ("/notifications", {"SIGNATURE": "a"}), ("/list_servers", None),
        ("/notifications", {"SIGNATURE": "a"}), ("/notifications", {"SIGNATURE": "c"})]


def test_inputs_that_are_not_json_are_refused_before_sending(stub):
    server = stub(Reply())
    with client_for(server.url) as client:
        with pytest.raises(ValueError, match="JSON"):
            client.run("model", X=float("nan"))
        with pytest.raises(ValueError, match="first argument"):
            client.run("model", SIGNATURE="other")
    assert server.received == []


# -- error mapping ------------------------------------------------------------------------------
@pytest.mark.parametrize(("reply", "expected"), [
    (error(400, "InvalidInput"), BadInput),
    (error(413, "PayloadTooLarge"), BadInput),
    (error(422, "InputError"), BadInput),
    (error(418, "InputError"), BadInput),
    (error(401, "Unauthorized"), Unauthorized),
    (error(403, "Forbidden"), Unauthorized),
    (error(404, "UnknownSignature"), UnknownSignature),
    (error(404, "SignatureDisabled"), UnknownSignature),
    (error(500, "ModelError"), ServerError),
    (error(502, "ServerDied"), ServerError),
    (error(503, "ServerUnavailable"), Unavailable),
    (error(504, "Timeout"), Timeout),
    (Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}), ServerError),
    (Reply(200, b"not json"), ServerError),
])
def test_status_codes_map_to_exception_types(stub, reply, expected):
    server = stub(reply)
    with client_for(server.url) as client, pytest.raises(expected) as caught:
        client.run("model", X=1)
    assert caught.value.status == reply.status
    assert len(server.received) == 1  # none of these is retried


def test_an_error_carries_type_message_request_id_and_body(stub):
    server = stub(error(400, "InvalidInput", "INPUT_VALUE should be defined in inputs", **{"X-Request-ID": "r-42"}))
    with client_for(server.url) as client, pytest.raises(BadInput) as caught:
        client.run("model")
    exc = caught.value
    assert (exc.status, exc.error_type, exc.request_id) == (400, "InvalidInput", "r-42")
    assert exc.message == "INPUT_VALUE should be defined in inputs"
    assert exc.body["error"]["type"] == "InvalidInput"
    assert str(exc) == "HTTP 400 InvalidInput request r-42: INPUT_VALUE should be defined in inputs"


def test_a_wrong_route_is_not_an_unknown_signature(stub):
    server = stub(error(404, "NotFound", "no such route"))
    with client_for(server.url) as client, pytest.raises(ClientError) as caught:
        client.list_servers()
    assert type(caught.value) is ClientError and caught.value.request_id is None


# -- retry policy -------------------------------------------------------------------------------
def test_503_with_retry_after_is_retried_until_it_succeeds(stub):
    busy = error(503, "Overloaded", **{"Retry-After": "0"})
    server, sleeps = stub(busy, busy, Reply()), []
    with client_for(server.url, sleeps) as client:
        assert client.run("model", X=1) == ANSWER
    assert len(server.received) == 3 and sleeps == [0.0, 0.0]


def test_503_with_retry_after_gives_up_after_retries(stub):
    server, sleeps = stub(error(503, "Overloaded", **{"Retry-After": "0"})), []
    with client_for(server.url, sleeps, retries=2) as client, pytest.raises(Unavailable) as caught:
        client.run("model", X=1)
    assert caught.value.retry_after == 0 and len(server.received) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "30"}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}])
def test_503_is_not_retried_without_a_usable_retry_after(stub, headers):
    # No header, a wait above max_retry_wait (an endpoint that failed to load), or a date.
    server, sleeps = stub(error(503, "ServerUnavailable", **headers), Reply()), []
    with client_for(server.url, sleeps) as client, pytest.raises(Unavailable) as caught:
        client.run("model", X=1)
    assert len(server.received) == 1 and sleeps == []
    assert caught.value.retry_after == (30.0 if headers.get("Retry-After") == "30" else None)


def test_500_is_not_retried(stub):
    server, sleeps = stub(error(500, "ModelError"), Reply()), []
    with client_for(server.url, sleeps) as client, pytest.raises(ServerError):
        client.run("model", X=1)
    assert len(server.received) == 1 and sleeps == []


def test_read_timeout_is_not_retried(stub):
    server, sleeps = stub(Reply(delay=0.6), Reply()), []
    with client_for(server.url, sleeps, timeout=(2.0, 0.2)) as client, pytest.raises(Timeout) as caught:
        client.run("model", X=1)
    assert caught.value.status is None and "may still be running" in caught.value.message
    time.sleep(0.3)  # a retry, had there been one, would have reached the stub by now
    assert len(server.received) == 1 and sleeps == []


def test_connection_refused_is_retried_until_the_server_listens(stub):
    server, sleeps = stub(Reply(), listen=False), []
    timer = threading.Timer(0.25, server.listen)
    timer.start()
    try:
        with client_for(server.url, sleeps, retries=6, backoff=0.1) as client:
            assert client.run("model", X=1) == ANSWER
    finally:
        timer.join()
    assert len(server.received) == 1  # refused attempts never reached it
    assert sleeps[:2] == [0.1, 0.2] and 2 <= len(sleeps) <= 6


def test_connection_refused_gives_up_after_retries():
    sleeps: list[float] = []
    with client_for(f"http://127.0.0.1:{free_port()}", sleeps, retries=3, backoff=0.01) as client:
        with pytest.raises(ConnectionFailed) as caught:
            client.run("model", X=1)
    assert sleeps == [0.01, 0.02, 0.04]
    assert caught.value.status is None and "Connection refused (4 attempts)" in str(caught.value)


def test_health_and_ready_are_booleans_and_tried_once(stub):
    server, sleeps = stub(Reply(body={"status": "ok"}), error(503, "NotReady", **{"Retry-After": "0"})), []
    with client_for(server.url, sleeps) as client:
        assert client.health() is True
        assert client.ready() is False
    assert len(server.received) == 2 and sleeps == []
    with client_for(f"http://127.0.0.1:{free_port()}", sleeps) as client:
        assert client.health() is False and sleeps == []


# -- streams ------------------------------------------------------------------------------------
ENVELOPE = {"call_id": 9, "signature": "h.model.W.0", "worker_id": "h:0", "items": 3, "time": "2026-01-01 00:00:00"}


def items(count: int) -> list[dict[str, int]]:
    return [{"i": index} for index in range(count)]


def stream_reply(*lines: Any, end: bool = True, **headers: str) -> Reply:
    return Reply(lines=[*lines, *([{"END": ENVELOPE}] if end else [])], headers=headers)


def error_line(error_type: str, message: str = "boom", request_id: str = "r-7") -> dict[str, Any]:
    return {"ERROR": message, "error": {"type": error_type, "message": message, "request_id": request_id}}


def test_stream_yields_each_item_before_the_server_writes_the_next(stub):
    first_seen = threading.Event()
    server = stub(stream_reply(*items(1), first_seen, *items(3)[1:]))
    with client_for(server.url) as client, client.stream("model", N=3) as stream:
        first = next(stream)
        first_seen.set()  # the server writes the rest only now (or after 5 s if we never got here)
        rest = list(stream)
    assert [first, *rest] == items(3)
    assert server.gates == [True]
    assert stream.envelope == ENVELOPE and stream.count == 3 and stream.closed
    [request] = server.received
    assert request["json"] == {"SIGNATURE": "model", "N": 3}
    assert request["headers"]["Accept"] == "application/x-ndjson"


def test_a_finished_stream_gives_its_connection_back_to_the_pool(stub):
    server = stub(stream_reply(*items(2)), stream_reply(*items(1)), Reply())
    with client_for(server.url) as client:
        assert list(client.stream("model")) == items(2)
        assert list(client.stream("model")) == items(1)
        assert client.run("model") == ANSWER
    assert len({r["port"] for r in server.received}) == 1


@pytest.mark.parametrize("use_with", [True, False])
def test_leaving_a_stream_early_closes_its_connection(stub, use_with):
    # 2 items, then one every 20 ms for 4 s: writes fail soon after the client has closed.
    server = stub(Reply(lines=[*items(2), *[line for item in items(200) for line in (0.02, item)]]), Reply())
    with client_for(server.url) as client:
        if use_with:
            with client.stream("model") as stream:
                for item in stream:
                    if item["i"] == 1:
                        break
        else:
            for item in client.stream("model"):  # the dropped Stream closes itself
                if item["i"] == 1:
                    break
        assert server.gone.wait(3), "the server kept writing to an open connection"
        assert client.run("model") == ANSWER  # the pool opens a new connection
    assert server.received[0]["port"] != server.received[1]["port"]


@pytest.mark.parametrize(("error_type", "expected"), [
    ("ModelError", ServerError), ("ServerDied", ServerError), ("Timeout", Timeout), ("InputError", BadInput),
    ("SomethingNew", ServerError),
])
def test_an_error_line_mid_stream_raises_with_the_request_id(stub, error_type, expected):
    server = stub(stream_reply(*items(2), error_line(error_type), end=False, **{"X-Request-ID": "r-7"}))
    received = []
    with client_for(server.url) as client, pytest.raises(expected) as caught:
        for item in client.stream("model"):
            received.append(item)
    assert received == items(2)
    exc = caught.value
    assert (type(exc), exc.status, exc.error_type, exc.request_id) == (expected, None, error_type, "r-7")
    assert exc.message == "boom" and str(exc) == f"{error_type} request r-7: boom"


@pytest.mark.parametrize(("reply", "expected"), [
    (error(400, "InvalidInput"), BadInput), (error(404, "UnknownSignature"), UnknownSignature),
    (error(500, "ModelError"), ServerError), (error(503, "ServerUnavailable"), Unavailable),
    (error(504, "Timeout"), Timeout),
])
def test_an_error_before_the_first_item_raises_as_run_does(stub, reply, expected):
    reply.headers["X-Request-ID"] = "r-1"
    server = stub(reply)
    with client_for(server.url) as client, pytest.raises(expected) as caught:
        client.stream("model")
    assert (caught.value.status, caught.value.request_id) == (reply.status, "r-1")
    assert len(server.received) == 1


def test_a_stream_refused_with_retry_after_is_retried(stub):
    server, sleeps = stub(error(503, "Overloaded", **{"Retry-After": "0"}), stream_reply(*items(2))), []
    with client_for(server.url, sleeps) as client:
        assert list(client.stream("model")) == items(2)
    assert len(server.received) == 2 and sleeps == [0.0]


def test_no_item_within_the_read_timeout_raises_timeout_and_closes(stub):
    server = stub(Reply(lines=[*items(1), 1.0, *[line for item in items(50) for line in (0.02, item)]]))
    with client_for(server.url, timeout=(2.0, 0.3)) as client:
        stream = client.stream("model")
        assert next(stream) == items(1)[0]
        with pytest.raises(Timeout) as caught:
            next(stream)
    assert caught.value.status is None and "within 0.3s after 1 item(s)" in caught.value.message
    assert stream.closed and stream.envelope is None
    assert server.gone.wait(3)


@pytest.mark.parametrize(("lines", "message"), [
    (items(2), "without its end line"),
    ([*items(1), b"not json\n"], "not JSON"),
])
def test_a_broken_stream_raises_server_error(stub, lines, message):
    server = stub(Reply(lines=lines))
    with client_for(server.url) as client, pytest.raises(ServerError, match=message):
        list(client.stream("model"))


def test_an_answer_that_is_not_a_stream_raises_server_error(stub):
    server = stub(Reply())  # application/json: a gateway without streaming
    with client_for(server.url) as client, pytest.raises(ServerError, match="application/json"):
        client.stream("model")


def test_stream_refuses_a_signature_input(stub):
    server = stub(Reply())
    with client_for(server.url) as client, pytest.raises(ValueError, match="first argument"):
        client.stream("model", SIGNATURE="other")
    assert server.received == []


# -- command line -------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("2.5", 2.5), ("true", True), ("null", None), ("[1, 2]", [1, 2]), ('"3"', "3"),
    ("casa", "casa"), ("NaN", "NaN"), ("1e999", "1e999"), ("", ""), ("a=b", "a=b"),
])
def test_cli_values_are_json_when_they_parse(text, value):
    assert cliargs.parse_value(text) == value


def test_cli_run_merges_data_and_key_values(stub, tmp_path, capsys):
    server = stub(Reply())
    inputs = tmp_path / "in.json"
    inputs.write_text('{"A": 1, "B": "x"}')
    assert cli.main(["--url", server.url, "run", "model", "--data", f"@{inputs}", "B=casa", "C=[1]"]) == 0
    assert server.received[0]["json"] == {"SIGNATURE": "model", "A": 1, "B": "casa", "C": [1]}
    assert json.loads(capsys.readouterr().out) == ANSWER["predict_result"]


def test_cli_run_takes_a_whole_run_body_as_data(stub, tmp_path, capsys):
    """A body saved from a /run call, SIGNATURE included, is taken when it names the endpoint run."""
    server = stub(Reply())
    body = tmp_path / "body.json"
    body.write_text('{"SIGNATURE": "model", "A": 1}')
    assert cli.main(["--url", server.url, "run", "model", "--data", f"@{body}"]) == 0
    assert server.received[0]["json"] == {"SIGNATURE": "model", "A": 1}
    assert cli.main(["--url", server.url, "run", "other", "--data", f"@{body}"]) == 2
    assert "--data names SIGNATURE 'model', but this runs 'other'" in capsys.readouterr().err
    assert cli.main(["--url", server.url, "run", "model", "SIGNATURE=model"]) == 2
    assert "the signature is run's first argument" in capsys.readouterr().err
    assert len(server.received) == 1


@pytest.mark.parametrize(("reply", "code"), [
    (error(404, "UnknownSignature"), 4), (error(503, "ServerUnavailable"), 3), (error(400, "InvalidInput"), 2),
    (error(500, "ModelError"), 1), (error(504, "Timeout"), 1), (error(401, "Unauthorized"), 1),
])
def test_cli_exit_codes_and_one_error_line(stub, capsys, reply, code):
    server = stub(reply)
    assert cli.main(["--url", server.url, "run", "model", "X=1"]) == code
    err = capsys.readouterr().err
    assert err.startswith("bis: error: HTTP ") and err.count("\n") == 1


def test_cli_usage_errors_exit_2_without_a_request(stub, capsys):
    server = stub(Reply())
    assert cli.main(["--url", server.url, "run", "model", "NOEQUALS"]) == 2
    assert cli.main(["--url", server.url, "run", "model", "--data", "[1]"]) == 2
    assert cli.main(["--url", server.url, "servers", "X=1"]) == 2
    assert cli.main(["--url", server.url, "--timeout", "0", "servers"]) == 2
    assert cli.main([]) == 2
    assert server.received == []
    assert "expected KEY=VALUE, got 'NOEQUALS'" in capsys.readouterr().err


def test_servers_table_has_a_row_per_child_and_their_errors():
    answer = {"AVAIL_SERVERS": {
        "a": {"STATE": "READY", "PID": 11, "PORT": 5003, "RESTARTS": 0, "UPTIME": "0:00:42",
              "WORKERS": {"total": 2, "ready": 2, "busy": 1, "queue": 0, "max_queue": 64}},
        "b": {"STATE": "FAILED", "PID": None, "PORT": 5004, "RESTARTS": 0, "UPTIME": "0:00:00",
              "WORKERS": {"total": 2, "ready": 0}, "ERROR": "ImportError: no module x"}},
        "SUPPORT_PROCESSES": {"s": {"STATE": "READY", "PID": 13, "RESTARTS": 1, "UPTIME": "0:00:40"}}}
    lines = servers_text(answer).splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "PORT", "WORKERS", "BUSY", "QUEUE", "RESTARTS", "UPTIME"]
    assert lines[1].split() == ["a", "READY", "11", "5003", "2/2", "1", "0/64", "0", "0:00:42"]
    assert lines[2].split() == ["b", "FAILED", "-", "5004", "0/2", "-", "-", "0", "0:00:00"]
    assert lines[5].split() == ["s", "READY", "13", "1", "0:00:40"]
    assert lines[-1].strip() == "b (FAILED): ImportError: no module x"


def test_cli_run_stream_prints_one_json_line_per_item(stub, capsys):
    server = stub(stream_reply(*items(3)))
    assert cli.main(["--url", server.url, "run", "--stream", "model", "N=3"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == items(3)
    assert server.received[0]["json"] == {"SIGNATURE": "model", "N": 3}


def test_cli_run_stream_json_adds_the_end_line(stub, capsys):
    server = stub(stream_reply(*items(2)))
    assert cli.main(["--url", server.url, "run", "model", "--stream", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [*items(2), {"END": ENVELOPE}]


@pytest.mark.parametrize(("reply", "code", "printed"), [
    (stream_reply(*items(2), error_line("ModelError"), end=False), 1, 2),
    (stream_reply(*items(1), error_line("InputError"), end=False), 2, 1),
    (error(404, "UnknownSignature"), 4, 0),
    (error(503, "ServerUnavailable"), 3, 0),
])
def test_cli_run_stream_errors_exit_as_run_does(stub, capsys, reply, code, printed):
    server = stub(reply)
    assert cli.main(["--url", server.url, "run", "--stream", "model"]) == code
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == printed
    assert err.startswith("bis: error: ") and err.count("\n") == 1
