"""Property-based fuzzing of what hostile clients reach first: the HTTP front (over real loopback
sockets, as the gateway and the model servers serve it) and the V2 tensor decoder. Whatever comes
in, the answer is well-formed HTTP, every error is JSON with a client or server status of ours,
and the front goes on serving; the decoder refuses with a 4xx, never with an unexpected exception."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basic_inference_server.errors import ServingError
from basic_inference_server.transport import httpfront
from basic_inference_server.transport.httpfront import FrontLimits, HttpFront
from basic_inference_server.transport.v2codec import decode_request


def _wsgi(environ, start_response):
    body = json.dumps({"path": environ.get("PATH_INFO", "")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _fast(request, respond):
    respond(200, json.dumps({"bytes": len(request.body)}).encode(), None)


@pytest.fixture(scope="module")
def front():
    sweep = httpfront._SWEEP_INTERVAL
    httpfront._SWEEP_INTERVAL = 0.05  # a request the fuzzer left half-sent is given up at once
    front = HttpFront(_wsgi, "127.0.0.1", 0, fast_path="/run", threads=2, fast_handler=_fast,
                      limits=FrontLimits(max_body=4096, header_timeout=0.2, body_timeout=0.2, keepalive_timeout=0.2,
                                         max_headers=20, max_header_bytes=2048))
    front.start()
    yield front
    front.close()
    httpfront._SWEEP_INTERVAL = sweep


_LAST = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"  # its answer ends the exchange


def exchange(port: int, data: bytes, pieces: int) -> bytes:
    """Send ``data`` in ``pieces`` then a last request that closes the connection (a client's end of
    file is its leaving: it would cancel what it asked); read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        step = max(1, len(data) // pieces)
        try:
            for start in range(0, len(data), step):
                sock.sendall(data[start:start + step])
            sock.sendall(_LAST)
        except OSError:  # the server answered and closed before all was sent
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return received
            if not chunk:
                return received
            received += chunk


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each complete answer in ``raw`` (Content-Length framed)."""
    found = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
        status = int(lines[0].split()[1])
        fields = dict(line.split(b":", 1) for line in lines[1:])
        length = int(fields.get(b"Content-Length", b"0"))
        if rest[:9] in (b"", b"HTTP/1.1 "):  # the answer to a HEAD: its length, no body
            length = 0
        assert len(rest) >= length, "an answer cut short"
        found.append((status, rest[:length]))
        raw = rest[length:]
    return found


_METHOD = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PRI", b"G\x00T", b""])
_PATH = st.sampled_from([b"/run", b"/%72un", b"/health", b"/", b"*", b"//run", b"/run?x=1", b"/\xff", b"/a/../run",
                         b"http://h/run", b""])
_VERSION = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\r", b"HTTP/9", b""])
_HEADER = st.tuples(
    st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Expect", b"Connection", b"Host", b"X-Request-ID",
                     b"Accept", b"content-length", b"X", b"Bad Name", b""]),
    st.one_of(st.sampled_from([b"0", b"5", b"100000", b"-1", b"chunked", b"gzip, chunked", b"100-continue",
                               b"close", b"keep-alive", b"text/event-stream", b"1, 2", b"\xff\xfe"]),
              st.binary(max_size=40)),
)
_BODY = st.one_of(st.binary(max_size=300), st.just(b"5\r\nhello\r\n0\r\n\r\n"), st.just(b'{"SIGNATURE": "x"}'))


@st.composite
def http_requests(draw) -> bytes:
    line = draw(_METHOD) + b" " + draw(_PATH) + b" " + draw(_VERSION) + b"\r\n"
    headers = b"".join(name + b": " + value + b"\r\n" for name, value in draw(st.lists(_HEADER, max_size=6)))
    return line + headers + b"\r\n" + draw(_BODY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(http_requests(), st.lists(http_requests(), min_size=2, max_size=4).map(b"".join),
                      st.binary(max_size=600)),
       pieces=st.integers(min_value=1, max_value=5))
def test_any_bytes_get_well_formed_answers_and_json_errors(front, data, pieces):
    for status, body in answers(exchange(front.port, data, pieces)):
        assert 100 <= status <= 599
        if status >= 400 and body:  # (HEAD: no body)
            error = json.loads(body)
            assert error["ERROR"] and error["error"]["type"], body
            assert status in (400, 404, 405, 408, 413, 431, 500, 503), (status, body)
            assert status != 500, body  # a client's bytes are never a server fault


def test_head_is_answered_without_a_body(front):
    reply = exchange(front.port, b"HEAD /run HTTP/1.1\r\nHost: t\r\n\r\n", 1)
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and b"Content-Length: " in head
    assert answers(rest) == [(200, b'{"path": "/health"}')]


def test_the_front_serves_after_the_fuzzing(front):
    reply = exchange(front.port, b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", 1)
    assert answers(reply) == [(200, b'{"bytes": 2}'), (200, b'{"path": "/health"}')]


_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=5))
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                             max_size=4), max_leaves=12)
_TENSOR = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=4), _VALUE),
     "datatype": st.sampled_from(["BOOL", "UINT8", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "x", 3]),
     "shape": st.one_of(st.lists(st.integers(-2, 5), max_size=3), _VALUE)},
    optional={"data": _VALUE, "parameters": st.one_of(
        st.fixed_dictionaries({"binary_data_size": st.integers(-1, 40)}), _VALUE)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=st.fixed_dictionaries({}, optional={"inputs": st.one_of(st.lists(_TENSOR, max_size=3), _VALUE),
                                                    "outputs": _VALUE, "parameters": _VALUE, "id": _VALUE}),
       binary=st.binary(max_size=64), split=st.booleans())
def test_the_v2_decoder_refuses_with_a_client_error_only(request, binary, split):
    header = json.dumps(request).encode()
    try:
        decode_request(header + binary if split else header, len(header) if split else None)
    except ServingError as exc:
        assert 400 <= exc.status < 500, exc
