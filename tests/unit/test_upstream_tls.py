"""gateway/routing/upstream.py over TLS (a remote server's https:// URL): its read timeout holds,
and a pooled connection is reused whatever its descriptor number."""

from __future__ import annotations

import resource
import socket
import ssl
import threading

import pytest

from basic_inference_server.gateway.routing.upstream import ReadTimedOut, Upstream

trustme = pytest.importorskip("trustme")


class TlsServer:
    """Answers each request on a connection with a small 200, or, ``silent``, never answers."""

    def __init__(self, silent: bool = False):
        self.ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost").configure_cert(context)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.silent, self.stop, self.connections = silent, threading.Event(), 0
        self.thread = threading.Thread(target=self._serve, args=(context,), daemon=True)
        self.thread.start()

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def _serve(self, context: ssl.SSLContext) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(context, raw), daemon=True).start()

    def _talk(self, context: ssl.SSLContext, raw: socket.socket) -> None:
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        with conn:
            conn.settimeout(5)
            try:
                while not self.stop.is_set():
                    if not conn.recv(65536):
                        return
                    if self.silent:
                        self.stop.wait(5)
                        return
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def tls_server():
    servers: list[TlsServer] = []

    def start(**options) -> TlsServer:
        servers.append(TlsServer(**options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_tls_server_that_never_answers_times_out(tls_server):
    server = tls_server(silent=True)
    upstream = Upstream("127.0.0.1", server.port, tls=server.client_context(), server_name="localhost")
    with pytest.raises(ReadTimedOut, match="within 0.3 s"):
        upstream.request("GET", "/health", timeout=0.3)


def test_a_pooled_tls_connection_is_reused_past_descriptor_1023(tls_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the open-file limit ({hard}) leaves no descriptor past 1023")
    wanted = max(soft, 2200)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
    # Every free descriptor up to past 1023 taken (descriptors are given lowest first; a fixed count
    # left holes that other tests of this process had closed), so the connection's lands past 1023.
    filler = [socket.socket()]
    while filler[-1].fileno() <= 1030 and len(filler) < 2000:
        filler.append(socket.socket())
    try:
        server = tls_server()
        upstream = Upstream("127.0.0.1", server.port, tls=server.client_context(), server_name="localhost")
        for _ in range(3):
            assert upstream.request("GET", "/health", timeout=5).data == b"ok"
        assert server.connections == 1
        assert upstream._idle[0][0].fileno() > 1023
        upstream.close()
    finally:
        for sock in filler:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
