"""Keep-alive HTTP/1.1 connections from the gateway to one model server, from a thread.

The gateway's health probes, admin routes and metric scrapes cross this client (``/run`` goes
over the internal channel, or :mod:`..remote.client` for a remote server), so it does only what a
call to our own server needs: one ``sendall`` of head and body, one read of the answer
(Content-Length or chunked), and the socket back to the pool. urllib3 with http.client underneath
cost several times as much per call. It speaks only to the model servers of this gateway's
configuration, never to arbitrary hosts; with ``tls`` (a remote server's ``https://`` URL) each
connection is TLS, its certificate checked for ``server_name``.

Sockets are pooled per server in a deque (appends and pops are atomic, so no lock); an idle
socket is checked before reuse, so a server that restarted on the same port is never sent a
request over a dead connection. Requests are never retried here: ``/run`` is not idempotent.

Timeouts are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO``, set only when they change) on
blocking sockets: Python's own socket timeouts make every ``send``/``recv`` two system calls
(a ``poll`` first) and ``settimeout`` a third, which a loaded gateway pays on every request.
"""

from __future__ import annotations

import collections
import select
import socket
import ssl
import struct

from ...webutil import ENDPOINT_TOKEN_HEADER

_CRLF2 = b"\r\n\r\n"
_READ_SIZE = 65536
_MAX_HEAD = 65536


class ConnectFailed(OSError):
    """No connection could be made: nothing was sent."""


class ReadTimedOut(OSError):
    """The request was sent but no full answer came within the read timeout."""


class ConnectionLost(OSError):
    """The connection broke after (part of) the request was sent, before a full answer."""


TransportError = ConnectFailed | ReadTimedOut | ConnectionLost


class UpstreamReply:
    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], data: bytes):
        self.status = status
        self.headers = headers  # lower-case names
        self.data = data


class Upstream:
    """A pool of keep-alive connections to ``host:port``."""

    def __init__(self, host: str, port: int, maxsize: int = 32, connect_timeout: float = 2.0,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None, token: str | None = None):
        self.host = host
        self.token = token  # sent as X-Endpoint-Token on every request (the server's secret)
        self.tls, self.server_name = tls, server_name
        self.port = port
        self.maxsize = maxsize
        self.connect_timeout = connect_timeout
        self.closed = False
        self._idle: collections.deque[tuple[socket.socket, float]] = collections.deque()  # (socket, its timeout)
        self._host_header = f"Host: {host}:{port}\r\n".encode("latin-1")

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> UpstreamReply:
        """Send one request and read its answer; raise ConnectFailed, ReadTimedOut or ConnectionLost."""
        head = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        if self.token:
            head.append(f"{ENDPOINT_TOKEN_HEADER}: {self.token}\r\n".encode("latin-1"))
        if headers:
            head.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        sock, current = self._checkout()
        try:
            if timeout != current:
                _set_timeout(sock, timeout)
            sock.sendall(b"".join(head) + body)
            reply, keep = _read_reply(sock, method == "HEAD")
        except (BlockingIOError, TimeoutError):  # the kernel's timeout (plain), Python's (TLS)
            sock.close()
            raise ReadTimedOut(f"no answer from {self.host}:{self.port} within {timeout:g} s") from None
        except ConnectionLost:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise ConnectionLost(f"connection to {self.host}:{self.port} lost: {exc}") from None
        if keep and not self.closed and len(self._idle) < self.maxsize:
            self._idle.append((sock, timeout))
        else:
            sock.close()
        return reply

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when their request ends."""
        self.closed = True
        while self._idle:
            try:
                self._idle.pop()[0].close()
            except IndexError:
                break

    def _checkout(self) -> tuple[socket.socket, float | None]:
        """A pooled live socket and the timeout set on it, or a new one (no timeout set yet)."""
        while True:
            try:
                sock, timeout = self._idle.pop()
            except IndexError:
                break
            if _alive(sock):
                return sock, timeout
            sock.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            if self.tls is not None:  # the handshake within the connect timeout too
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_name)
        except OSError as exc:  # ssl.SSLError (a certificate that does not verify) included
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        sock.settimeout(None)  # blocking from here on; the kernel enforces the timeouts
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, None


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    if isinstance(sock, ssl.SSLSocket):  # OpenSSL retries a read the kernel timed out: Python's own timeout
        sock.settimeout(seconds)
        return
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _alive(sock: socket.socket) -> bool:
    """An idle keep-alive socket is usable when the server has neither closed it nor sent
    anything on it (a closed one reads EOF at once; a live one would block)."""
    if isinstance(sock, ssl.SSLSocket):  # no peeking through TLS: any byte there is a close or junk
        readable = select.poll()
        readable.register(sock, select.POLLIN)
        return not sock.pending() and not readable.poll(0)
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # end of file, or bytes nobody asked for


def _read_reply(sock: socket.socket, head_only: bool) -> tuple[UpstreamReply, bool]:
    """Read one answer; returns it and whether the connection may be kept."""
    buf = bytearray()
    while True:
        end = buf.find(_CRLF2)
        if end >= 0:
            break
        if len(buf) > _MAX_HEAD:
            raise ConnectionLost("answer head too large")
        chunk = sock.recv(_READ_SIZE)
        if not chunk:
            raise ConnectionLost("server closed the connection before answering")
        buf += chunk
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise ConnectionLost(f"malformed status line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest_bytes = buf[end + 4:]
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if head_only or status in (204, 304) or 100 <= status < 200:
        data = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        data = _read_chunked(sock, rest_bytes)
    elif "content-length" in headers:
        data = _read_exact(sock, rest_bytes, int(headers["content-length"]))
    else:  # the body runs until the server closes the connection
        data = _read_to_eof(sock, rest_bytes)
        keep = False
    return UpstreamReply(status, headers, data), keep


def _read_exact(sock: socket.socket, buf: bytearray, size: int) -> bytes:
    while len(buf) < size:
        chunk = sock.recv(max(_READ_SIZE, size - len(buf)))
        if not chunk:
            raise ConnectionLost("server closed the connection in the middle of an answer")
        buf += chunk
    if len(buf) > size:
        raise ConnectionLost("server sent more than its Content-Length")
    return bytes(buf)


def _read_to_eof(sock: socket.socket, buf: bytearray) -> bytes:
    while chunk := sock.recv(_READ_SIZE):
        buf += chunk
    return bytes(buf)


def _read_chunked(sock: socket.socket, buf: bytearray) -> bytes:
    out = bytearray()
    while True:
        while (eol := buf.find(b"\r\n")) < 0:
            buf += _recv_more(sock)
        size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
        del buf[:eol + 2]
        if size == 0:  # skip trailers up to the blank line
            while (trailer_end := buf.find(b"\r\n")) != 0:
                if trailer_end < 0:
                    buf += _recv_more(sock)
                else:
                    del buf[:trailer_end + 2]
            return bytes(out)
        while len(buf) < size + 2:
            buf += _recv_more(sock)
        out += buf[:size]
        del buf[:size + 2]


def _recv_more(sock: socket.socket) -> bytes:
    chunk = sock.recv(_READ_SIZE)
    if not chunk:
        raise ConnectionLost("server closed the connection in the middle of a chunked answer")
    return chunk
