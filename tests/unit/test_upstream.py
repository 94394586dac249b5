"""The gateway's keep-alive client to its model servers, against scripted raw-socket servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from basic_inference_server.gateway.routing.upstream import ConnectFailed, ConnectionLost, ReadTimedOut, Upstream


class ScriptedServer:
    """Accepts connections on 127.0.0.1; ``handler(conn, request_bytes)`` answers each request."""

    def __init__(self, handler: Callable[[socket.socket, bytes], bool]):
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                if not self.handler(conn, self.requests[-1]):
                    return  # the handler closed the connection

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def answer(body: bytes, extra: bytes = b"", status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body


@pytest.fixture
def serve():
    servers: list[ScriptedServer] = []

    def start(handler: Callable[[socket.socket, bytes], bool]) -> ScriptedServer:
        servers.append(ScriptedServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def echo_length(conn: socket.socket, request: bytes) -> bool:
    body = request.partition(b"\r\n\r\n")[2]
    conn.sendall(answer(b'{"n": %d}' % len(body), b"Retry-After: 3\r\n"))
    return True


def test_post_reuses_one_keep_alive_connection_and_sends_body_and_headers(serve):
    server = serve(echo_length)
    upstream = Upstream("127.0.0.1", server.port)
    for _ in range(5):
        reply = upstream.request("POST", "/run", b'{"x": 1}', {"Content-Type": "application/json"}, timeout=5)
        assert (reply.status, reply.data, reply.headers["retry-after"]) == (200, b'{"n": 8}', "3")
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /run HTTP/1.1\r\n")
    assert b"Content-Type: application/json\r\n" in first and b"Content-Length: 8\r\n" in first


def test_large_bodies_both_ways(serve):
    big = b"x" * 3_000_000

    def handler(conn, request):
        conn.sendall(answer(big))
        return True

    server = serve(handler)
    reply = Upstream("127.0.0.1", server.port).request("POST", "/run", big, timeout=10)
    assert reply.data == big
    assert len(server.requests[0]) > len(big)


def test_chunked_answer_is_decoded_and_the_connection_kept(serve):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        return True

    server = serve(handler)
    upstream = Upstream("127.0.0.1", server.port)
    assert upstream.request("GET", "/health", timeout=5).data == b"hello, world"
    assert upstream.request("GET", "/health", timeout=5).data == b"hello, world"
    assert server.connections == 1


def test_connection_close_and_body_until_eof_open_a_new_connection(serve):
    def handler(conn, request):
        if len(server.requests) % 2:
            conn.sendall(answer(b"{}", b"Connection: close\r\n"))
        else:
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"late\": 1}")
        return False

    server = serve(handler)
    upstream = Upstream("127.0.0.1", server.port)
    assert upstream.request("POST", "/run", b"{}", timeout=5).data == b"{}"
    reply = upstream.request("POST", "/run", b"{}", timeout=5)
    assert (reply.status, reply.data) == (503, b'{"late": 1}')
    assert server.connections == 2


def test_an_idle_connection_the_server_closed_is_not_reused(serve):
    def handler(conn, request):
        conn.sendall(answer(b"{}"))
        return False  # keep-alive promised, then closed (a restart, or waitress's idle timeout)

    server = serve(handler)
    upstream = Upstream("127.0.0.1", server.port)
    upstream.request("POST", "/run", b"{}", timeout=5)
    time.sleep(0.05)
    assert upstream.request("POST", "/run", b"{}", timeout=5).status == 200  # not ConnectionLost
    assert server.connections == 2


def test_read_timeout_raises_and_drops_the_connection(serve):
    def handler(conn, request):
        if len(server.requests) == 1:
            time.sleep(1.0)
        conn.sendall(answer(b"{}"))
        return True

    server = serve(handler)
    upstream = Upstream("127.0.0.1", server.port)
    started = time.monotonic()
    with pytest.raises(ReadTimedOut):
        upstream.request("POST", "/run", b"{}", timeout=0.3)
    assert time.monotonic() - started < 0.9
    assert upstream.request("POST", "/run", b"{}", timeout=5).status == 200  # a fresh connection
    assert server.connections == 2


def test_server_dying_mid_answer_is_connection_lost(serve):
    def handler(conn, request):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")
        return False

    server = serve(handler)
    with pytest.raises(ConnectionLost):
        Upstream("127.0.0.1", server.port).request("POST", "/run", b"{}", timeout=5)


def test_garbage_instead_of_http_is_connection_lost(serve):
    def handler(conn, request):
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")
        return False

    server = serve(handler)
    with pytest.raises(ConnectionLost, match="malformed status line"):
        Upstream("127.0.0.1", server.port).request("POST", "/run", b"{}", timeout=5)


def test_nothing_listening_is_connect_failed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ConnectFailed):
            Upstream("127.0.0.1", port).request("POST", "/run", b"{}", timeout=5)


def test_idle_pool_is_bounded_and_closed(serve):
    release = threading.Event()

    def handler(conn, request):
        release.wait(5)
        conn.sendall(answer(b"{}"))
        return True

    server = serve(handler)
    upstream = Upstream("127.0.0.1", server.port, maxsize=2)
    threads = [threading.Thread(target=upstream.request, args=("POST", "/run", b"{}"), kwargs={"timeout": 5})
               for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(server.requests) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(5)
    assert server.connections == 4
    assert len(upstream._idle) == 2
    upstream.close()
    assert upstream.closed and not upstream._idle
