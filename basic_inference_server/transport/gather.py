"""Gathered writes: a frame's or an answer's pieces (header, body, envelope) go out in one system
call, never joined into a new buffer first (a join copies every byte of a large body once more).

:class:`Pieces` is an answer body given as pieces. :func:`send_gathered` writes pieces on a
blocking socket (the model server's channel); :func:`write_gathered` on an asyncio transport,
whose own ``writelines`` joins them (Python 3.11): the pieces go to the socket with ``writev``
while the transport holds nothing unsent, and only what the socket did not take is handed to the
transport (which copies it into its buffer, as it would any write). Pieces of less than
GATHER_MIN bytes in all are joined: for a small answer the copy costs less than the bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview
IOV_MAX = 1024  # pieces one writev/sendmsg takes (Linux)
GATHER_MIN = 65536  # smaller pieces are joined and written through the transport: cheaper than writev's bookkeeping


class Pieces(tuple):
    """An answer body made of pieces, written as one (its length is the sum of theirs)."""

    __slots__ = ()

    @property
    def size(self) -> int:
        return sum(map(len, self))

    def joined(self) -> bytes:
        """The body in one buffer, where one is needed (a copy)."""
        return b"".join(self)


def body_size(body: Buffer | Pieces) -> int:
    return body.size if isinstance(body, Pieces) else len(body)


def _rest(pieces: Sequence[Buffer], sent: int) -> list[Buffer]:
    """The pieces after the first ``sent`` bytes (the piece cut in two as a view, not a copy)."""
    for index, piece in enumerate(pieces):
        if sent < len(piece):
            return [memoryview(piece)[sent:] if sent else piece, *pieces[index + 1:]]
        sent -= len(piece)
    return []


def send_gathered(sock: socket.socket, pieces: Sequence[Buffer]) -> None:
    """Write every piece on a blocking socket (``sendmsg``, IOV_MAX pieces at a time); OSError as
    ``sendall`` raises it."""
    while pieces:
        batch = pieces[:IOV_MAX]
        sent = sock.sendmsg(batch)
        if len(pieces) <= IOV_MAX and sent == sum(map(len, batch)):
            return  # all of it at once: the usual case
        pieces = _rest(batch, sent) + list(pieces[IOV_MAX:])


def write_gathered(transport: asyncio.WriteTransport, fd: int | None, pieces: Sequence[Buffer]) -> None:
    """Write ``pieces`` on ``transport`` in order; ``fd`` is its socket's descriptor, or None when
    the bytes must go through the transport (TLS): then they are joined."""
    if fd is None or sum(map(len, pieces)) < GATHER_MIN or transport.get_write_buffer_size() \
            or transport.is_closing():
        transport.write(b"".join(pieces))  # a small answer: one copy costs less than the pieces' bookkeeping
        return
    pieces = [piece for piece in pieces if len(piece)]
    while pieces:
        batch = pieces[:IOV_MAX]
        try:
            sent = os.writev(fd, batch)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the transport meets the error itself on the write below, and reports it
        rest = _rest(batch, sent)
        pieces = rest + pieces[IOV_MAX:]
        if rest:
            break
    for piece in pieces:  # what the socket did not take: the transport keeps it and writes it when it can
        if transport.is_closing():
            return  # it met an error (and reported it): the rest goes nowhere
        transport.write(piece)
