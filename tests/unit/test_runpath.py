"""The gateway's /run hot path in process: the HTTP front's connection, the router and RunPath,
exactly as production runs them, with a scripted channel instead of a model server."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest
import uvloop
from gccheck import cyclic_garbage

from basic_inference_server.apikeyfile import hash_of
from basic_inference_server.config import EndpointConfig
from basic_inference_server.gateway.apikeys import ApiKeys
from basic_inference_server.gateway.observe.metrics import GatewayMetrics
from basic_inference_server.gateway.routing.channel import Cancel
from basic_inference_server.gateway.routing.envelope import Envelope
from basic_inference_server.gateway.routing.outcome import Failure, Misroute, Outcome, Reply
from basic_inference_server.gateway.routing.router import Admission, Router
from basic_inference_server.gateway.routing.routes import Routes, RouteTable
from basic_inference_server.gateway.routing.runpath import RunPath
from basic_inference_server.gateway.routing.upstream import ConnectFailed, ConnectionLost, ReadTimedOut
from basic_inference_server.gateway.supervision.handle import READY, RESTARTING, ChildHandle
from basic_inference_server.pipeconfig import PipelineConfig
from basic_inference_server.transport import pipedata
from basic_inference_server.transport.frames import MISROUTED, PIPE_OUT, PIPED
from basic_inference_server.transport.httpfront import FrontLimits, HttpConnection, HttpFront

ANSWER = b'{"predict_result":{"y":7},"call_id":1,"signature":"h.x.Y.0","worker_id":"h:0"}'


def endpoint(name: str, **changes) -> EndpointConfig:
    values = dict(name=name, server_class=name, nr_workers=1, host="127.0.0.1", description="", disabled=False,
                  request_timeout=5.0, max_queue=1, server_threads=4, ping_interval=10.0, response_format=None,
                  max_batch_size=1, max_batch_wait_ms=5.0, nr_replicas=1, worker_config=MappingProxyType({}))
    values.update(changes)
    return EndpointConfig(**values)


def outcome_of(reply) -> Outcome:
    """A scripted reply, (status, meta, body) or an error, as the channel hands it to a callback."""
    if isinstance(reply, Exception):
        return Failure(reply)
    status, meta, body = reply
    return Misroute(body) if status == MISROUTED else Reply(status, meta, body)


class ScriptedChannel:
    """Answers each request with the next scripted reply; records what it was sent."""

    def __init__(self, name: str, replies: list):
        self.name = name
        self.replies = replies
        self.sent: list[tuple[str, str, bytes]] = []
        self.held: list = []
        self.cancelled: list[int] = []
        self.alone: list[bool] = []

    def send(self, request_id, routed, body, timeout, callback, on_item=None, idle=0.0, total=0.0,
             wants_stream=False, alone=False, pipe=0):
        self.sent.append((request_id, routed, body))
        self.alone.append(alone)
        reply = self.replies.pop(0) if self.replies else (200, None, ANSWER)
        if reply == "hold":
            self.held.append(callback)
            return len(self.sent)
        callback(outcome_of(reply))
        return None

    def cancel(self, tag):
        self.cancelled.append(tag)
        return Cancel.SENT


class FakeTransport:
    def __init__(self):
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data):
        self.out.append(data)

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, key):
        return ("127.0.0.1", 4242)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class Gateway:
    def __init__(self, endpoints, states=None, replies=None):
        handles = []
        for number, ep in enumerate(endpoints):
            handle = ChildHandle(endpoint=ep, port=6000 + number)
            handle.state = (states or {}).get(ep.name, READY)
            handle.socket_path = ep.name
            handles.append(handle)
        table = RouteTable()
        table.routes = Routes.build(tuple(endpoints) + (endpoint("off", disabled=True),), handles)
        self.handles = {h.name: h for h in handles}
        self.router = Router(table, Envelope("1.2.3"), Admission(100), "nested")
        self.metrics = GatewayMetrics(table)
        self.loop = uvloop.new_event_loop()
        self.front = HttpFront(lambda environ, start: [], "127.0.0.1", 0, fast_path="/run", threads=1,
                               limits=FrontLimits(max_body=200_000))
        self.run_path = RunPath(self.router, self.metrics, self.loop, self.front.executor, lambda: {"up": 1})
        self.channels = {name: ScriptedChannel(name, list((replies or {}).get(name, []))) for name in self.handles}
        self.run_path.channel = lambda handle: self.channels[handle.name]
        self.front.fast_handler = self.run_path

    def post(self, body: bytes, headers: bytes = b"") -> tuple[int, dict, dict]:
        conn = HttpConnection(self.front)
        transport = FakeTransport()
        conn.connection_made(transport)
        conn.data_received(b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n" % (len(body), headers)
                           + body)
        return parse(b"".join(transport.out))

    def close(self):
        self.front.sock.close()
        self.front.executor.shutdown()
        self.loop.close()


def parse(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


@pytest.fixture
def gateway():
    made = []

    def build(*args, **kwargs):
        made.append(Gateway(*args, **kwargs))
        return made[-1]

    yield build
    for gw in made:
        gw.close()


def test_answer_is_the_servers_with_the_envelope_and_the_request_id(gateway):
    gw = gateway([endpoint("echo")])
    status, headers, body = gw.post(b'{"SIGNATURE": "echo", "X": 1}', b"X-Request-ID: abc-1\r\n")
    assert status == 200
    assert body["predict_result"] == {"y": 7} and body["ver"] == "1.2.3" and "gw-uptime" in body
    assert headers["x-request-id"] == "abc-1"
    (request_id, routed, sent), = gw.channels["echo"].sent
    assert (request_id, routed, sent) == ("abc-1", "echo", b'{"SIGNATURE": "echo", "X": 1}')  # as received
    assert gw.metrics.requests_by_signature() == {"echo": {"200": 1}}


def test_a_misrouted_request_is_routed_again_by_the_signature_its_server_read(gateway):
    misrouted = json.dumps({"ERROR": "elsewhere", "error": {"type": "Misrouted"}, "SIGNATURE": "b"}).encode()
    gw = gateway([endpoint("a"), endpoint("b")], replies={"a": [(MISROUTED, None, misrouted)]})
    status, _, _ = gw.post(b'{"X": {"SIGNATURE": "a"}, "SIGNATURE": "b"}')
    assert status == 200
    assert [s[1] for s in gw.channels["a"].sent] == ["a"]
    assert [s[1] for s in gw.channels["b"].sent] == ["b"]  # b's server checks it too
    assert gw.metrics.requests_by_signature() == {"b": {"200": 1}}


def test_a_key_allowed_one_endpoint_cannot_reach_another_through_a_misroute(gateway, tmp_path):
    """The body's first "SIGNATURE" names an endpoint the key may call, its top-level one another:
    routed again by what the model server read, the request is checked against the key again (403)."""
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"KEYS": [{"NAME": "a_only", "SHA256": hash_of("bis_a"), "ENDPOINTS": ["a"]}]}))
    misrouted = json.dumps({"ERROR": "elsewhere", "error": {"type": "Misrouted"}, "SIGNATURE": "b"}).encode()
    gw = gateway([endpoint("a"), endpoint("b")], replies={"a": [(MISROUTED, None, misrouted)]})
    gw.run_path.keys = ApiKeys(str(keys_file))
    status, _, body = gw.post(b'{"X": {"SIGNATURE": "a"}, "SIGNATURE": "b"}', b"X-API-Key: bis_a\r\n")
    assert status == 403 and "'b'" in body["ERROR"]
    assert gw.channels["b"].sent == []
    assert gw.run_path.keys.figures() == [("a_only", "admitted", 1), ("a_only", "forbidden", 1)]  # refused there
    assert next(iter(gw.run_path.keys._keys.values())).in_flight == 0  # its place came back


def test_servers_that_disagree_on_the_signature_are_a_502_not_a_loop(gateway):
    to_b = json.dumps({"SIGNATURE": "b"}).encode()
    to_a = json.dumps({"SIGNATURE": "a"}).encode()
    gw = gateway([endpoint("a"), endpoint("b")],
                 replies={"a": [(MISROUTED, None, to_b)], "b": [(MISROUTED, None, to_a)]})
    status, _, body = gw.post(b'{"SIGNATURE": "a"}')
    assert (status, body["error"]["type"]) == (502, "ServerDied")
    assert len(gw.channels["a"].sent) == len(gw.channels["b"].sent) == 1


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"X": 1, "SIGNATURE": "nope"}', 404, "Bad signature 'nope'"),
    (b'{"X": {"SIGNATURE": "nope"}, "SIGNATURE": "echo"}', 200, ""),  # read exactly: the body is small
    (b'{"SIGNATURE": "ec\\u0068o"}', 200, ""),  # an escaped name, read exactly
    (b'{"SIGNATURE": 5}', 400, "SIGNATURE must be a string"),
    (b'{"X": 1}', 400, "SIGNATURE not found"),
    (b'{"X": 1e400, "SIGNATURE": "echo"}', 200, ""),  # the gateway reads SIGNATURE only: the server parses the rest
    (b'{"SIGNATURE": "nope", ', 400, "Malformed JSON body"),
    (b'["SIGNATURE"]', 400, "must be an object"),
], ids=["unknown", "nested-first", "escaped", "not-a-string", "none", "rest-unread", "malformed", "array"])
def test_a_small_body_that_routes_nowhere_is_read_exactly(gateway, body, status, message):
    gw = gateway([endpoint("echo")])
    got, _, answer = gw.post(body)
    assert got == status, answer
    assert message in answer.get("ERROR", "")


def test_a_large_body_is_never_parsed_in_the_gateway(gateway):
    filler = b'"filler": [' + b"[[[[[[[[[[]]]]]]]]]]," * 4000 + b"[]], "
    gw = gateway([endpoint("echo")])
    got, _, answer = gw.post(b'{' + filler + b'"SIGNATURE": "nope"}')
    assert got == 404 and "Bad signature 'nope'" in answer["ERROR"]
    got, _, answer = gw.post(b'{' + filler + b'"X": 1}')
    assert got == 400 and "SIGNATURE not found: a body of over 64 KB" in answer["ERROR"]
    got, _, _ = gw.post(b'{' + filler + b'"SIGNATURE": "echo"}')
    assert got == 200
    assert len(gw.channels["echo"].sent) == 1


@pytest.mark.parametrize("error, status, error_type", [
    (ConnectionLost("gone"), 502, "ServerDied"),
    (ReadTimedOut("late"), 504, "Timeout"),
    (ConnectFailed("no socket"), 502, "ServerDied"),
])
def test_transport_failures_are_the_documented_statuses(gateway, error, status, error_type):
    gw = gateway([endpoint("echo")], replies={"echo": [error]})
    got, _, body = gw.post(b'{"SIGNATURE": "echo"}')
    assert (got, body["error"]["type"]) == (status, error_type)


def test_errors_before_forwarding(gateway):
    gw = gateway([endpoint("echo"), endpoint("down")], states={"down": RESTARTING})
    assert gw.post(b'{"SIGNATURE": "nope"}')[0] == 404
    assert gw.post(b'{"SIGNATURE": "off"}')[2]["error"]["type"] == "SignatureDisabled"
    assert gw.post(b'{"VALUE": 1}')[0] == 400
    assert gw.post(b'{"SIGNATURE": "nope", "X": ')[0] == 400  # not routable: parsed here, and not JSON
    status, headers, body = gw.post(b'{"SIGNATURE": "down"}')
    assert status == 503 and "Retry-After" in {k.title(): v for k, v in headers.items()}
    assert gw.metrics.requests_by_signature()["(unknown)"] == {"404": 1}
    assert not any(channel.sent for channel in gw.channels.values())


def test_errors_of_the_server_are_relayed_with_retry_after(gateway):
    gw = gateway([endpoint("echo")], replies={"echo": [(503, "7", b'{"ERROR": "full", "error": {}}')]})
    status, headers, body = gw.post(b'{"SIGNATURE": "echo"}')
    assert (status, headers["retry-after"], body["ERROR"]) == (503, "7", "full")


def open_echo_calls(gw, count: int) -> list:
    """``count`` clients, each on its own connection, sending one /run to echo (not answered yet)."""
    transports = []
    for _ in range(count):
        conn, transport = HttpConnection(gw.front), FakeTransport()
        conn.connection_made(transport)
        conn.data_received(b'POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: 21\r\n\r\n{"SIGNATURE": "echo"}')
        transports.append(transport)
    return transports


def test_an_endpoint_holds_at_most_its_capacity_in_flight(gateway):
    gw = gateway([endpoint("echo")], replies={"echo": ["hold", "hold", "hold"]})  # capacity 1 + 1
    conns = open_echo_calls(gw, 3)
    assert len(gw.channels["echo"].sent) == 2
    assert parse(b"".join(conns[2].out))[2]["error"]["type"] == "Overloaded"
    for callback in gw.channels["echo"].held:
        callback(Reply(200, None, ANSWER))
    assert [parse(b"".join(t.out))[0] for t in conns] == [200, 200, 503]
    assert gw.router.admission.inflight.count == 0 and gw.handles["echo"].inflight.count == 0


def test_requests_asked_one_at_a_time_are_written_alone_and_a_burst_is_not(gateway):
    """A request is written to its model server at once (alone) only while the clients ask one
    at a time; in a burst, and for a while after it, they wait for the end of the loop's turn to
    go out together."""
    gw = gateway([endpoint("echo", nr_workers=8)], replies={"echo": [(200, None, ANSWER)] * 3 + ["hold"] * 6})
    for _ in range(3):
        assert gw.post(b'{"SIGNATURE": "echo"}')[0] == 200
    channel = gw.channels["echo"]
    assert channel.alone == [True, True, True]
    open_echo_calls(gw, 6)  # six held at once: a burst
    assert channel.alone[3:] == [True, False, False, False, False, False]
    for callback in channel.held:
        callback(Reply(200, None, ANSWER))
    assert gw.post(b'{"SIGNATURE": "echo"}')[0] == 200
    assert channel.alone[-1] is False  # still recent: the average of requests in flight is above 1.5
    for _ in range(20):
        gw.post(b'{"SIGNATURE": "echo"}')
    assert channel.alone[-1] is True  # one at a time again


def test_draining_refuses_new_requests(gateway):
    gw = gateway([endpoint("echo")])
    gw.router.admission.draining = True
    status, _, body = gw.post(b'{"SIGNATURE": "echo"}')
    assert status == 503 and "shutting down" in body["ERROR"]


def test_a_client_that_leaves_cancels_its_request_and_frees_its_place(gateway):
    gw = gateway([endpoint("echo")], replies={"echo": ["hold"]})
    conn, transport = HttpConnection(gw.front), FakeTransport()
    conn.connection_made(transport)
    conn.data_received(b'POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: 21\r\n\r\n{"SIGNATURE": "echo"}')
    assert gw.handles["echo"].inflight.count == 1
    conn.connection_lost(None)
    assert gw.channels["echo"].cancelled == [1]
    assert gw.handles["echo"].inflight.count == 0 and gw.router.admission.inflight.count == 0
    assert gw.metrics.requests_by_signature() == {"echo": {"499": 1}}
    assert gw.post(b'{"SIGNATURE": "echo"}')[0] == 200  # the place is free again


def test_a_batching_endpoint_holds_a_batch_per_worker(gateway):
    gw = gateway([endpoint("echo", max_batch_size=3)], replies={"echo": ["hold"] * 5})  # capacity 1 x 3 + 1
    transports = open_echo_calls(gw, 5)
    assert len(gw.channels["echo"].sent) == 4
    assert parse(b"".join(transports[4].out))[0] == 503


def test_the_channels_of_servers_no_longer_routed_to_are_closed_once_idle(gateway, tmp_path):
    gw = gateway([endpoint("echo")])
    run_path = RunPath(gw.router, gw.metrics, gw.loop, gw.front.executor, lambda: {})
    handle = gw.handles["echo"]
    handle.socket_path = str(tmp_path / "old.sock")
    old = run_path.channel(handle)
    assert run_path.channel(handle) is old  # one channel per server, reused
    handle.socket_path = str(tmp_path / "new.sock")  # the route table now points at a new generation
    new = run_path.channel(handle)
    assert new is not old and set(run_path._channels) == {handle.socket_path}


def test_metrics_read_the_route_table_the_supervisor_publishes(gateway, monkeypatch):
    """/metrics renders from the route table's snapshot: the children (their states and restarts),
    the recycles done and the requests the gateway counted, without reaching into the supervisor."""
    from basic_inference_server.gateway.observe import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "_fetch_stats", lambda handle: None)  # no server to ask
    gw = gateway([endpoint("echo")])
    handles = list(gw.handles.values())
    gw.router.table.publish_local(tuple(h.endpoint for h in handles), handles, {("echo", "max_requests"): 2})
    handles[0].restarts = 3
    assert gw.post(b'{"SIGNATURE": "echo"}')[0] == 200
    text = gw.metrics.render().decode()
    assert 'bis_server_state{replica="1",signature="echo",state="READY"} 1.0' in text
    assert 'bis_server_restarts_total{replica="1",signature="echo"} 3.0' in text
    assert 'bis_server_recycles_total{reason="max_requests",signature="echo"} 2.0' in text
    assert 'bis_requests_total{code="200",signature="echo"} 1.0' in text


class PipedChannel(ScriptedChannel):
    """A pipeline step's server: answers a value for the next step (PIPED), or a scripted error."""

    def __init__(self, name: str, fail: bool = False):
        super().__init__(name, [])
        self.fail = fail
        self.released: list[int] = []

    def send(self, request_id, routed, body, timeout, callback, on_item=None, idle=0.0, total=0.0,
             wants_stream=False, alone=False, pipe=0, v2=None):
        self.sent.append((request_id, routed, body))
        if self.fail:
            callback(Reply(500, None, b'{"ERROR": "step failed"}'))
        elif pipe & PIPE_OUT:
            callback(Reply(200, None, b"".join(bytes(p) for p in pipedata.encode({"y": 1})[0]), PIPED))
        else:
            callback(Reply(200, None, ANSWER))
        return len(self.sent)

    def release(self, tag):
        self.released.append(tag)


@pytest.mark.parametrize("failing", [None, "a", "b"])
def test_a_pipeline_request_leaves_no_reference_cycle_and_releases_its_values(gateway, failing):
    """A pipeline's run and its /run hold each other while it runs; once answered (or failed at any
    step) neither is left for the cyclic collector (an 8 MB body would stay until it ran), and every
    value a step answered is released."""
    gw = gateway([endpoint("a"), endpoint("b")])
    gw.channels = {name: PipedChannel(name, fail=name == failing) for name in ("a", "b")}
    parents = {"a": (), "b": ("a",)}
    gw.router.table.publish_pipelines((PipelineConfig("flow", parents, ("a", "b"), "b", 5.0),))

    def requests() -> None:
        for _ in range(3):
            status, _headers, body = gw.post(b'{"SIGNATURE": "flow", "X": 1}')
            assert status == (500 if failing else 200), body
            if failing:
                assert body["STEP"] == failing and body["PIPELINE"] == "flow"

    kinds = cyclic_garbage(requests)
    assert not kinds & {"Call", "PipelineRun", "HttpRequest"}, kinds
    if failing != "a":
        assert len(gw.channels["a"].released) == 3  # a's value, once b had it
