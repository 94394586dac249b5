"""The internal channel end to end: the gateway's ChannelClient against a real ChannelServer
(a model server's listener) on a Unix socket, with scripted handlers instead of workers."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time

import pytest
import uvloop

from basic_inference_server.gateway.routing.channel import Cancel, ChannelClient
from basic_inference_server.gateway.routing.outcome import Failure, Misroute, Outcome, Reply
from basic_inference_server.gateway.routing.upstream import ConnectFailed, ConnectionLost, ReadTimedOut
from basic_inference_server.server.channel import ChannelServer, Connection
from basic_inference_server.transport.frames import (
    MISROUTED,
    REQUEST,
    STREAM,
    FrameReader,
    item_frame,
    reply_frame,
    request_head,
)


class Call:
    cancelled = False


class Handler:
    """Answers each request from its own thread (as a worker would), or holds it until released."""

    def __init__(self):
        self.seen: list[tuple[int, str, str, bytes, int]] = []
        self.jobs: dict[int, Call] = {}
        self.release = threading.Event()

    def __call__(self, conn, request):
        tag, body, oversize = request.tag, request.body, request.oversize
        self.seen.append((tag, request.request_id, request.routed, body, oversize))
        if oversize:
            conn.reply(tag, 413, b'{"ERROR": "too large"}')
            return
        job = self.jobs[tag] = conn.pending[tag] = Call()
        if body == b"hold":
            threading.Thread(target=self._later, args=(conn, tag, job), daemon=True).start()
        else:
            threading.Thread(target=conn.reply, args=(tag, 200, b'{"echo": ' + body + b"}", None)).start()

    def _later(self, conn, tag, job):
        self.release.wait(5)
        if not job.cancelled:
            conn.reply(tag, 200, b'{"late": true}')


@pytest.fixture
def socket_path(tmp_path):
    return str(tmp_path / "s.sock")


@pytest.fixture
def server(socket_path):
    handler = Handler()
    channel = ChannelServer(socket_path, handler, max_body=1000, cancel=lambda job: setattr(job, "cancelled", True))
    channel.start()
    yield channel, handler
    handler.release.set()
    channel.close()


def as_tuple(outcome: Outcome) -> tuple:
    """An outcome as (status or error, meta, body, flags)."""
    match outcome:
        case Reply(status, meta, body, flags):
            return status, meta, body, flags
        case Misroute(body):
            return MISROUTED, None, body, 0
        case Failure(error):
            return error, None, b"", 0


def run(coroutine):
    return uvloop.run(asyncio.wait_for(coroutine, 10))


async def call(client: ChannelClient, body: bytes, timeout: float = 5.0, routed: str = "demo"):
    future = asyncio.get_running_loop().create_future()
    client.send("rid-7", routed, body, timeout,
                lambda outcome: future.done() or future.set_result(as_tuple(outcome)[:3]))
    return await future


def test_socket_file_is_private_and_removed_on_close(socket_path):
    channel = ChannelServer(socket_path, Handler(), max_body=10, cancel=print)
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    channel.close()
    assert not os.path.exists(socket_path)


def test_a_stale_socket_file_is_replaced(socket_path):
    with open(socket_path, "w"):
        pass
    channel = ChannelServer(socket_path, Handler(), max_body=10, cancel=print)
    assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    channel.close()


def test_many_requests_in_flight_on_one_connection_each_get_their_own_answer(server):
    _, handler = server

    async def main():
        client = ChannelClient(asyncio.get_running_loop(), server[0].path)
        answers = await asyncio.gather(*(call(client, str(i).encode()) for i in range(200)))
        client.close()
        return answers

    answers = run(main())
    assert [a[2] for a in answers] == [b'{"echo": %d}' % i for i in range(200)]
    assert {a[0] for a in answers} == {200}
    assert {(rid, routed) for _, rid, routed, _, _ in handler.seen} == {("rid-7", "demo")}


def test_retry_after_travels_back():
    left, right = socket.socketpair(socket.AF_UNIX)
    Connection(left, 100).reply(9, 503, b"{}", "4")
    (frame,) = FrameReader().feed(right.recv(100))
    assert (frame.tag, frame.status, frame.meta, frame.body) == (9, 503, b"4", b"{}")
    left.close()
    right.close()


def test_an_oversize_request_is_refused_and_the_connection_goes_on(server):
    async def main():
        client = ChannelClient(asyncio.get_running_loop(), server[0].path)
        big = await call(client, b"x" * 5000)
        small = await call(client, b"1")
        client.close()
        return big, small

    big, small = run(main())
    assert big[0] == 413
    assert small == (200, None, b'{"echo": 1}')


def test_no_server_is_connect_failed(tmp_path):
    async def main():
        client = ChannelClient(asyncio.get_running_loop(), str(tmp_path / "nobody.sock"))
        return await call(client, b"1")

    error, _, _ = run(main())
    assert isinstance(error, ConnectFailed)


def test_a_late_answer_times_out_and_the_server_is_told_to_skip_it(server):
    _, handler = server

    async def main():
        loop = asyncio.get_running_loop()
        client = ChannelClient(loop, server[0].path)
        pending = asyncio.ensure_future(call(client, b"hold", timeout=0.2))
        await asyncio.sleep(0.3)
        client.expire(time.monotonic())
        answer = await pending
        await asyncio.sleep(0.1)  # the CANCEL frame reaches the server
        handler.release.set()
        after = await call(client, b"2")
        client.close()
        return answer, after

    (error, _, _), after = run(main())
    assert isinstance(error, ReadTimedOut)
    assert after[2] == b'{"echo": 2}'
    (job,) = [job for tag, job in handler.jobs.items() if handler.seen[tag - 1][3] == b"hold"]
    assert job.cancelled


def test_server_dying_mid_request_is_connection_lost(socket_path):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path)
    listener.listen()

    def die_after_reading():
        conn, _ = listener.accept()
        conn.recv(100)
        conn.close()

    thread = threading.Thread(target=die_after_reading)
    thread.start()

    async def main():
        client = ChannelClient(asyncio.get_running_loop(), socket_path)
        return await call(client, b"1")

    error, _, _ = run(main())
    thread.join()
    listener.close()
    assert isinstance(error, ConnectionLost)


def test_a_connection_the_server_closed_while_idle_is_never_used(socket_path):
    """The server answers one request, then closes the connection (it restarted); the next
    request goes on a new connection instead of failing on the dead one."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path)
    listener.listen()
    accepted = []
    closed = threading.Event()

    def serve_one_each():
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            reader, frames = FrameReader(), []
            while not frames:
                frames = reader.feed(conn.recv(1000))
            conn.sendall(reply_frame(frames[0].tag, 200, b"{}"))
            conn.shutdown(socket.SHUT_WR)  # closes its end after answering
            closed.set()

    thread = threading.Thread(target=serve_one_each, daemon=True)
    thread.start()

    async def main():
        client = ChannelClient(asyncio.get_running_loop(), socket_path)
        first = await call(client, b"1")
        await asyncio.get_running_loop().run_in_executor(None, closed.wait, 5)
        second = await call(client, b"2")
        return first, second

    first, second = run(main())
    thread.join(5)
    listener.close()
    assert first[0] == 200 and second[0] == 200
    assert len(accepted) == 2


def test_a_gateway_closing_mid_frame_cancels_nothing_else(server):
    """Half a frame then EOF: the server drops that connection and keeps serving others."""
    channel, handler = server
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(channel.path)
    raw.sendall(request_head(1, "r", "", 100) + b"x" * 10)
    raw.close()

    async def main():
        client = ChannelClient(asyncio.get_running_loop(), channel.path)
        return await call(client, b"3")

    assert run(main())[2] == b'{"echo": 3}'


def test_frames_waiting_unsent_hold_the_front_back_and_a_cancel_drops_them(socket_path):
    """Past BACKLOG_HIGH bytes of unsent frames the front is told to stop reading; cancelling
    requests whose frames were never written drops them and lets it read again."""
    from basic_inference_server.gateway.routing.channel import BACKLOG_HIGH

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path)
    listener.listen()
    told: list[bool] = []

    async def main():
        client = ChannelClient(asyncio.get_running_loop(), socket_path, congested=lambda source, on: told.append(on))
        body = b"x" * (1 << 20)
        tags = [client.send("r", "", body, 5, lambda outcome: None) for _ in range(BACKLOG_HIGH // len(body) + 2)]
        assert told and told[-1] is True  # nothing written yet (not connected): all of it waits
        for tag in tags:
            assert client.cancel(tag) is Cancel.UNSENT
        assert told[-1] is False
        assert client.in_flight == 0
        client.close()

    run(main())
    listener.close()


def test_a_request_sent_while_only_a_stream_is_in_flight_keeps_the_connection(socket_path):
    """With a stream's items still unread in the socket and nothing else waiting, a new request
    must not take the connection for dead (it once did: the stream and everything on the
    connection failed with 502)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path)
    listener.listen()

    def serve():
        conn, _ = listener.accept()
        reader = FrameReader()
        frames = []
        while not frames:
            frames = reader.feed(conn.recv(65536))
        tag = frames[0].tag
        conn.sendall(item_frame(tag, b'{"i":0}'))
        time.sleep(0.1)
        conn.sendall(item_frame(tag, b'{"i":1}'))  # unread when the next request is sent
        frames = []
        while not any(f.kind == REQUEST for f in frames):
            frames += reader.feed(conn.recv(65536))
        second = next(f for f in frames if f.kind == REQUEST).tag
        conn.sendall(reply_frame(tag, 200, b"{}", None, STREAM) + reply_frame(second, 200, b'{"two":2}'))
        time.sleep(0.5)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()

    async def main():
        loop = asyncio.get_running_loop()
        client = ChannelClient(loop, socket_path)
        items, answers = [], {}
        done = loop.create_future()

        def on_item(body):
            items.append(body)
            if len(items) == 1:
                time.sleep(0.3)  # the second item arrives meanwhile and waits in the socket
                client.send("r2", "", b"{}", 5, lambda o: answers.setdefault("second", as_tuple(o)) and None)

        def first(outcome):
            answers["first"] = as_tuple(outcome)
            loop.call_later(0.1, done.set_result, None)

        client.send("r1", "", b"{}", 5, first, on_item, 5, 60, True)
        await done
        client.close()
        return items, answers

    items, answers = run(main())
    listener.close()
    assert items == [b'{"i":0}', b'{"i":1}']
    assert answers["first"][0] == 200 and answers["first"][3] == STREAM
    assert answers["second"][:3] == (200, None, b'{"two":2}')
