"""The gateway's HTTP client to remote model servers (gateway/remote/client.py), against small
servers on 127.0.0.1 in the same event loop: answers, streams as the server frames them, a
server that takes bodies slowly (the front is told to stop reading), refusals and limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from basic_inference_server.gateway.remote.client import RemoteClient
from basic_inference_server.gateway.routing.channel import BACKLOG_HIGH
from basic_inference_server.gateway.routing.outcome import Failure, Misroute, Outcome, Reply
from basic_inference_server.gateway.routing.upstream import ConnectFailed, ConnectionLost
from basic_inference_server.transport.frames import STREAM


def run(scenario) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 20))


async def serve(answer: bytes, read_body: bool = True) -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    """A server that reads one request head (and its body unless told not to) and writes ``answer``."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        if not read_body:
            await asyncio.sleep(1.0)  # takes nothing for a while, then the whole body, and leaves
        seen.append(await reader.readexactly(length))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def as_tuple(outcome: Outcome) -> tuple:
    """An outcome as (status or error, meta, body, flags)."""
    match outcome:
        case Reply(status, meta, body, flags):
            return status, meta, body, flags
        case Misroute(body):
            return 421, None, body, 0
        case Failure(error):
            return error, None, b"", 0


class Recorder:
    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self.items: list[bytes] = []

    def callback(self, outcome: Outcome) -> None:
        if not self.done.done():
            self.done.set_result(as_tuple(outcome))

    def on_item(self, item: bytes) -> None:
        self.items.append(item)


def test_an_answer_comes_back_with_the_secret_and_routing_headers_sent() -> None:
    async def scenario() -> None:
        server, port, seen = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nRetry-After: 3\r\n\r\n{\"a\":1}")
        client = RemoteClient(asyncio.get_running_loop(), "127.0.0.1", port, "s3cret")
        got = Recorder()
        client.send("rid-1", "echo", b'{"SIGNATURE":"echo"}', 5, got.callback)
        assert await got.done == (200, "3", b'{"a":1}', 0)
        head = seen[0].decode()
        assert "X-Endpoint-Token: s3cret\r\n" in head and "X-Routed-Signature: echo\r\n" in head
        assert "X-Request-ID: rid-1\r\n" in head and seen[1] == b'{"SIGNATURE":"echo"}'
        assert client.in_flight == 0
        server.close()

    run(scenario)


def test_a_stream_is_read_event_by_event_whatever_the_line_endings() -> None:
    events = (b": keep-alive\r\n\r\ndata: {\"i\":0}\r\n\r\ndata: {\"i\":1}\n\n"
              b"event: end\ndata: {\"items\":2}\n\n")
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(events), events)
    async def scenario() -> None:
        server, port, _ = await serve(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        client = RemoteClient(asyncio.get_running_loop(), "127.0.0.1", port, None)
        got = Recorder()
        client.send("r", "", b"{}", 5, got.callback, got.on_item, idle=5, total=10, wants_stream=True)
        assert await got.done == (200, None, b'{"items":2}', STREAM)
        assert got.items == [b'{"i":0}', b'{"i":1}']  # the comment is no item
        server.close()

    run(scenario)


def test_a_server_slow_to_take_bodies_holds_the_front_back_until_it_drains() -> None:
    async def scenario() -> None:
        server, port, _ = await serve(b"", read_body=False)
        changes: list[bool] = []
        client = RemoteClient(asyncio.get_running_loop(), "127.0.0.1", port, None,
                              congested=lambda source, on: changes.append(on))
        got = Recorder()
        client.send("r", "", b"x" * (4 * BACKLOG_HIGH), 10, got.callback)
        for _ in range(100):
            if True in changes:
                break
            await asyncio.sleep(0.02)
        assert changes and changes[0] is True  # the front is told to stop reading requests
        status = (await got.done)[0]
        assert isinstance(status, ConnectionLost)  # the server closed without answering
        assert changes[-1] is False  # and told to go on
        server.close()

    run(scenario)


@pytest.mark.parametrize("answer, error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n" + b"x" * 99999, "over the limit of 1000 bytes"),
    (b"NOT HTTP\r\n\r\n", "malformed HTTP"),
])
def test_oversized_or_malformed_answers_fail_with_their_reason(answer: bytes, error: str) -> None:
    async def scenario() -> None:
        server, port, _ = await serve(answer)
        client = RemoteClient(asyncio.get_running_loop(), "127.0.0.1", port, None, max_reply=1000)
        got = Recorder()
        client.send("r", "", b"{}", 5, got.callback)
        status = (await got.done)[0]
        assert isinstance(status, ConnectionLost) and error in str(status)
        server.close()

    run(scenario)


def test_nothing_listening_is_connect_failed() -> None:
    async def scenario() -> None:
        server, port, _ = await serve(b"")
        server.close()
        await server.wait_closed()
        client = RemoteClient(asyncio.get_running_loop(), "127.0.0.1", port, None)
        got = Recorder()
        client.send("r", "", b"{}", 5, got.callback)
        assert isinstance((await got.done)[0], ConnectFailed)

    run(scenario)


@pytest.mark.parametrize("body, not_run, draining", [
    (b'{"ERROR":"full","error":{"type":"Overloaded","message":"full"}}', True, False),
    (b'{"ERROR":"model server is shutting down","error":{"type":"ServerUnavailable"}}', True, True),
    (b'{"ERROR":"the model said no","error":{"type":"ServerUnavailable"}}', False, False),  # may have run
])
def test_only_a_refusal_before_running_may_go_to_another_server(body: bytes, not_run: bool, draining: bool) -> None:
    from basic_inference_server.gateway.remote.client import NotRun

    async def scenario() -> None:
        head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\nRetry-After: 1\r\n\r\n" % len(body)
        answer = head + body
        server, port, _ = await serve(answer)
        client = RemoteClient(asyncio.get_running_loop(), "127.0.0.1", port, None)
        got = Recorder()
        client.send("r", "", b"{}", 5, got.callback)
        status = (await got.done)[0]
        if not_run:
            assert isinstance(status, NotRun) and status.draining is draining
            assert (status.status, status.retry_after, status.body) == (503, "1", body)  # kept to relay
        else:
            assert status == 503
        server.close()

    run(scenario)


def test_a_refused_secret_says_so() -> None:
    from basic_inference_server.gateway.remote.client import SecretRefused

    async def scenario() -> None:
        server, port, _ = await serve(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}")
        client = RemoteClient(asyncio.get_running_loop(), "127.0.0.1", port, "wrong")
        got = Recorder()
        client.send("r", "", b"{}", 5, got.callback)
        status = (await got.done)[0]
        assert isinstance(status, SecretRefused) and "BIS_ENDPOINT_TOKEN" in str(status)
        server.close()

    run(scenario)
