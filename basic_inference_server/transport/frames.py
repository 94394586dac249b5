"""The internal channel's wire format: length-prefixed binary frames over a Unix socket.

The gateway forwards ``/run`` to a model server over one or a few connections to the server's
Unix socket, many requests in flight on each (a request is matched to its reply by its tag).
Every frame is a fixed 16-byte header, then ``meta_len`` bytes of metadata, then ``body_len``
bytes of body. Integers are big-endian::

    offset  size  field
    0       1     kind       REQUEST (1), REPLY (2), CANCEL (3), ITEM (4), CREDIT (5)
    1       1     flags      REQUEST: STREAM (1) when the client asked for a streamed answer,
                             V2 (2) for an Open Inference Protocol infer request;
                             REPLY: STREAM (1) ends a streamed answer, BINARY (2) a V2 answer
                             with binary tensors
    2       2     status     REPLY: the HTTP status of the answer; CREDIT: a number of items;
                             otherwise 0
    4       4     tag        the request's number on its connection, chosen by the gateway;
                             every other frame carries the tag of its REQUEST
    8       2     meta_len
    10      2     -          0 (reserved)
    12      4     body_len

    REQUEST  meta: the request id, then "\\n", then the signature the gateway routed by (the server
             answers MISROUTED, 421, when the body's SIGNATURE is another); with V2, then "\\n"
             and the body's JSON header length (empty: the body is all JSON), "\\n" and the
             model version; body: the request body as the client sent it
    REPLY    meta: the Retry-After value, or empty; with BINARY, the length of the body's JSON
             header; body: the answer (JSON, or a V2 JSON header and its binary tensors); flags
             STREAM: the end of a streamed answer, body its envelope
    CANCEL   no meta, no body: the gateway no longer waits for this request
    ITEM     no meta; body: one item of a streamed answer (JSON). The REPLY that follows the
             items ends the stream: 200 with the answer's envelope (no ``predict_result``), or
             the error that ended it
    CREDIT   no meta, no body: the server may send ``status`` more ITEMs of this request. A
             server starts a stream with STREAM_WINDOW items of credit; the gateway gives one
             back for each item its client has taken, so a slow reader holds back its own
             stream only, never memory

A receiver refuses a frame whose body is larger than its limit (:class:`FrameReader` reports it
and skips the body, so the connection and the other requests on it go on); a header it cannot
read ends the connection (:class:`ProtocolError`).
"""

from __future__ import annotations

import struct

HEAD = struct.Struct(">BBHIHxxI")
HEAD_SIZE = HEAD.size  # 16
REQUEST, REPLY, CANCEL, ITEM, CREDIT = 1, 2, 3, 4, 5
KINDS = frozenset((REQUEST, REPLY, CANCEL, ITEM, CREDIT))
STREAM = 1  # REQUEST flag: answer with ITEM frames, then the REPLY that ends the stream
V2 = 2  # REQUEST flag: an Open Inference Protocol infer request (meta has its header length, version)
BINARY = 2  # REPLY flag: a V2 answer with binary tensors (meta: its JSON header's length)
STREAM_WINDOW = 4  # ITEMs a server may send ahead of the gateway's CREDIT
MAX_META = 0xFFFF
MAX_BODY = 0xFFFFFFFF
MISROUTED = 421  # REPLY status: the body's SIGNATURE is not the one the gateway routed by


class ProtocolError(Exception):
    """The peer sent something that is not a frame: the connection cannot go on."""


class Frame:
    """One decoded frame. ``oversize`` is set (and ``body`` empty) when the body was over the
    reader's limit and has been skipped."""

    __slots__ = ("body", "flags", "kind", "meta", "oversize", "status", "tag")

    def __init__(self, kind: int, status: int, tag: int, meta: bytes, body: bytes, oversize: int = 0,
                 flags: int = 0):
        self.kind = kind
        self.flags = flags
        self.status = status
        self.tag = tag
        self.meta = meta
        self.body = body
        self.oversize = oversize

    def request_meta(self) -> tuple[str, str]:
        """``(request id, routed signature)`` of a REQUEST."""
        request_id, _, signature = self.meta.decode("ascii", "replace").partition("\n")
        return request_id, signature.partition("\n")[0]

    def v2_meta(self) -> tuple[int | None, str]:
        """``(JSON header length or None, model version)`` of a V2 REQUEST."""
        fields = self.meta.decode("ascii", "replace").split("\n")
        if len(fields) != 4:
            raise ProtocolError(f"a V2 request's meta has {len(fields)} fields, not 4")
        return (int(fields[2]) if fields[2] else None), fields[3]

    def __repr__(self) -> str:
        return f"Frame(kind={self.kind}, status={self.status}, tag={self.tag}, meta={self.meta!r}, " \
               f"body={len(self.body)} bytes{', oversize' if self.oversize else ''})"


def request_head(tag: int, request_id: str, signature: str, body_len: int, flags: int = 0,
                 v2: tuple[int | None, str] | None = None) -> bytes:
    """Header and metadata of a REQUEST (``v2``: its JSON header length and model version); the
    body follows as its own buffer (no copy)."""
    meta = f"{request_id}\n{signature}"
    if v2 is not None:
        flags |= V2
        meta += f"\n{'' if v2[0] is None else v2[0]}\n{v2[1]}"
    meta = meta.encode("ascii")
    return HEAD.pack(REQUEST, flags, 0, tag, len(meta), body_len) + meta


def reply_frame(tag: int, status: int, body: bytes, retry_after: str | None = None, flags: int = 0) -> bytes:
    """A REPLY; ``flags`` STREAM marks the end of a streamed answer (``body``: its envelope)."""
    return reply_head(tag, status, len(body), retry_after or "", flags) + body


def reply_head(tag: int, status: int, body_len: int, meta: str, flags: int = 0) -> bytes:
    """Header and metadata of a REPLY whose body follows in pieces."""
    raw = meta.encode("ascii")
    return HEAD.pack(REPLY, flags, status, tag, len(raw), body_len) + raw


def cancel_frame(tag: int) -> bytes:
    return HEAD.pack(CANCEL, 0, 0, tag, 0, 0)


def item_frame(tag: int, body: bytes) -> bytes:
    return HEAD.pack(ITEM, 0, 0, tag, 0, len(body)) + body


def credit_frame(tag: int, items: int) -> bytes:
    return HEAD.pack(CREDIT, 0, min(items, 0xFFFF), tag, 0, 0)


class FrameReader:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get the frames they complete.

    Bodies over ``max_body`` are not buffered: the frame is returned at once with ``oversize``
    set to the announced size, and the body bytes are dropped as they arrive.
    """

    def __init__(self, max_body: int = MAX_BODY):
        self.max_body = max_body
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversize body still to drop

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 between frames)."""
        return len(self._buf) + self._skip

    def feed(self, data: bytes) -> list[Frame]:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        start, size = 0, len(buf)
        while size - start >= HEAD_SIZE:
            kind, flags, status, tag, meta_len, body_len = HEAD.unpack_from(buf, start)
            if kind not in KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            meta_end = start + HEAD_SIZE + meta_len
            if body_len > self.max_body:
                if size < meta_end:
                    break
                frames.append(Frame(kind, status, tag, bytes(buf[start + HEAD_SIZE:meta_end]), b"", body_len, flags))
                available = size - meta_end
                if available >= body_len:
                    start = meta_end + body_len
                    continue
                self._skip = body_len - available
                start = size
                break
            end = meta_end + body_len
            if size < end:
                break
            with memoryview(buf) as view:  # one copy of the body, not a slice copied again
                frames.append(Frame(kind, status, tag, view[start + HEAD_SIZE:meta_end].tobytes(),
                                    view[meta_end:end].tobytes(), 0, flags))
            start = end
        if start:
            del buf[:start]
        return frames
