"""transport/gather.py: pieces written in one system call, whole and in order, on a blocking socket
and on an asyncio transport (including what the socket does not take at once, and under TLS)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from basic_inference_server.gateway.routing.envelope import Envelope
from basic_inference_server.transport.gather import IOV_MAX, Pieces, body_size, send_gathered, write_gathered


def _drain(sock: socket.socket, into: bytearray) -> threading.Thread:
    def read() -> None:
        while chunk := sock.recv(1 << 20):
            into.extend(chunk)

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_send_gathered_writes_every_piece_in_order_more_than_one_writev_can_take():
    left, right = socket.socketpair(socket.AF_UNIX)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the writes wait for the reader
    pieces = [bytes([n % 251]) * (n * 997) for n in range(1, 60)] + [b""] + [b"x"] * (IOV_MAX + 5)
    received = bytearray()
    reader = _drain(right, received)
    send_gathered(left, pieces)
    left.close()
    reader.join(10)
    assert received == b"".join(pieces)


@pytest.mark.parametrize("sizes", [[10, 20, 30], [1 << 20, 7, 3 << 20], [64] * (IOV_MAX * 2 + 3)])
def test_write_gathered_on_a_transport_keeps_order_with_the_writes_after_it(sizes):
    pieces = [bytes([n % 256]) * size for n, size in enumerate(sizes)]
    received = bytearray()

    async def scenario() -> None:
        left, right = socket.socketpair(socket.AF_UNIX)
        reader = _drain(right, received)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=left)
        write_gathered(transport, left.fileno(), pieces)  # more than the socket takes at once
        write_gathered(transport, left.fileno(), [b"after"])  # queued behind what is left
        transport.write(b"!")
        while transport.get_write_buffer_size():
            await asyncio.sleep(0.01)
        transport.close()
        await asyncio.sleep(0)
        await asyncio.to_thread(reader.join, 10)

    asyncio.run(scenario())
    assert received == b"".join(pieces) + b"after!"


def test_without_a_descriptor_the_pieces_go_through_the_transport_joined():
    written = []

    class Transport:
        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            written.append(data)

    write_gathered(Transport(), None, [b"a", memoryview(b"bc"), bytearray(b"d")])  # type: ignore[arg-type]
    assert written == [b"abcd"]


def test_the_envelope_is_added_without_copying_the_answer():
    envelope = Envelope("1.0", "host")
    answer = bytearray(b'{"predict_result": [1, 2, 3]}  \n')
    pieces = envelope.pieces(answer)
    assert isinstance(pieces, Pieces) and pieces[0].obj is answer  # a view of the answer itself
    joined = pieces.joined()
    assert joined.startswith(b'{"predict_result": [1, 2, 3],"time":') and joined.endswith(b"}")
    assert body_size(pieces) == len(joined)
    assert envelope.wrap(b"{ }").startswith(b'{"time":')  # an empty object takes no comma
    for bad in (b"[1]", b"{", b"", b'{"a": 1} x', b" {}"):
        with pytest.raises(ValueError):
            envelope.pieces(bad)
