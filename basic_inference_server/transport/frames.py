"""The internal channel's wire format: length-prefixed binary frames over a Unix socket.

The gateway forwards ``/run`` to a model server over one or a few connections to the server's
Unix socket, many requests in flight on each (a request is matched to its reply by its tag).
Every frame is a fixed 16-byte header, then ``meta_len`` bytes of metadata, then ``body_len``
bytes of body. Integers are big-endian::

    offset  size  field
    0       1     kind       REQUEST (1), REPLY (2), CANCEL (3), ITEM (4), CREDIT (5), RELEASE (6)
    1       1     flags      REQUEST: STREAM (1) when the client asked for a streamed answer,
                             V2 (2) for an Open Inference Protocol infer request, JOB (4) for a
                             durable job's body (its own fields, PRIORITY, WEBHOOK and custom_id,
                             are not inputs), PIPE_IN (8): the body is a pipeline step's input
                             (:mod:`.pipedata`, what the step before returned), PIPE_OUT (16):
                             answer with the value ``_post_process`` returned, for the next step,
                             PIPE_INLINE (32): with PIPE_OUT, every array in the value itself (the
                             next step is a remote server: no shared memory between hosts),
                             OPENAI (64): a request of OpenAI's API (its body is the request's;
                             the server answers in OpenAI's shapes, :mod:`...server.openaigen`,
                             and the REPLY that ends its stream holds the stream's last SSE
                             events, which the gateway writes as they are);
                             REPLY: STREAM (1) ends a streamed answer, BINARY (2) a V2 answer
                             with binary tensors, PLAIN (4) with STREAM: the stream's one item
                             was what a ``_predict`` that yields nothing returned, PIPED (8):
                             the body is a value for the next step of a pipeline
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
    RELEASE  no meta, no body: the gateway is done with the value this (answered) pipeline step
             returned: the server closes the memfds that hold its large buffers (see pipedata)
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
REQUEST, REPLY, CANCEL, ITEM, CREDIT, RELEASE = 1, 2, 3, 4, 5, 6
KINDS = frozenset((REQUEST, REPLY, CANCEL, ITEM, CREDIT, RELEASE))
STREAM = 1  # REQUEST flag: answer with ITEM frames, then the REPLY that ends the stream
V2 = 2  # REQUEST flag: an Open Inference Protocol infer request (meta has its header length, version)
JOB = 4  # REQUEST flag: a durable job's body, whose own fields (JOB_FIELDS) the hooks do not get
JOB_FIELDS = frozenset({"PRIORITY", "WEBHOOK", "custom_id"})
PIPE_IN = 8  # REQUEST flag: the body is a pipeline step's input, a value in pipedata's format
PIPE_OUT = 16  # REQUEST flag: answer with _post_process's value in pipedata's format (REPLY flag PIPED)
PIPE_INLINE = 32  # REQUEST flag, with PIPE_OUT: no shared memory in the value (the next step is on another host)
PIPE_FLAGS = PIPE_IN | PIPE_OUT | PIPE_INLINE
OPENAI = 64  # REQUEST flag: a request of OpenAI's API, answered in its shapes
BINARY = 2  # REPLY flag: a V2 answer with binary tensors (meta: its JSON header's length)
PLAIN = 4  # REPLY flag, with STREAM: the one item was a plain answer, not a generator's (a job keeps it as such)
PIPED = 8  # REPLY flag: the body is a pipeline step's value for the next step (pipedata)
STREAM_WINDOW = 4  # ITEMs a server may send ahead of the gateway's CREDIT
MAX_META = 0xFFFF
MAX_BODY = 0xFFFFFFFF
MISROUTED = 421  # REPLY status: the body's SIGNATURE is not the one the gateway routed by


class ProtocolError(Exception):
    """The peer sent something that is not a frame: the connection cannot go on."""


class Frame:
    """One decoded frame. ``body`` is ``bytes``, or a ``bytearray`` when it was received into a
    buffer of its own (:class:`FrameReader`); ``oversize`` is set (and ``body`` empty) when the
    body was over the reader's limit and has been skipped."""

    __slots__ = ("body", "flags", "kind", "meta", "oversize", "status", "tag")

    def __init__(self, kind: int, status: int, tag: int, meta: bytes, body: bytes | bytearray, oversize: int = 0,
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


def frame_head(kind: int, tag: int, body_len: int) -> bytes:
    """The header of a frame without meta (an ITEM's: its body follows as its own buffer)."""
    return HEAD.pack(kind, 0, 0, tag, 0, body_len)


def cancel_frame(tag: int) -> bytes:
    return frame_head(CANCEL, tag, 0)


def item_frame(tag: int, body: bytes) -> bytes:
    return frame_head(ITEM, tag, len(body)) + body


def credit_frame(tag: int, items: int) -> bytes:
    return HEAD.pack(CREDIT, 0, min(items, 0xFFFF), tag, 0, 0)


SCRATCH = 131072  # what one read takes at most between bodies: many small frames, or a body's start
OWN_BUFFER = 16384  # a body at least this large that has not all arrived gets a buffer of its own


class FrameReader:
    """Incremental decoder that owns the memory the bytes are received into: read into
    :meth:`get_buffer`, then :meth:`filled` says how many bytes came and returns the frames they
    complete (``recv_into`` on a blocking socket, or an :class:`asyncio.BufferedProtocol`).

    Small frames are read many at a time into one scratch buffer and their bodies copied out as
    ``bytes``. A body of OWN_BUFFER bytes or more that has not all arrived gets a ``bytearray`` of
    its announced size, and the rest of it is received straight into it: the body is copied once
    (by the kernel), bar the start that came with its header (SCRATCH at most).

    Bodies over ``max_body`` are not kept: the frame is returned at once with ``oversize`` set to
    the announced size, and the body bytes are dropped as they arrive. The peer is trusted to send
    what it announces (the channel is private to the gateway and its servers); ``max_body`` bounds
    what one frame may take.
    """

    def __init__(self, max_body: int = MAX_BODY):
        self.max_body = max_body
        self._scratch = bytearray(SCRATCH)
        self._view = memoryview(self._scratch)
        self._start = self._end = 0  # bytes received and not decoded: scratch[start:end]
        self._frame: Frame | None = None  # the frame whose body is being received into its own buffer
        self._body: memoryview | None = None
        self._got = 0  # bytes of that body received
        self._skip = 0  # bytes of an oversize body still to drop

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held or awaited (0 between frames)."""
        awaited = len(self._body) - self._got if self._body is not None else 0
        return self._end - self._start + self._skip + awaited

    def get_buffer(self) -> memoryview:
        """Where the next bytes go (read at most its length)."""
        if self._body is not None:
            return self._body[self._got:]
        if self._skip:
            return self._view[:min(self._skip, SCRATCH)]
        if self._start:  # an incomplete header or small frame: to the front, the room after it
            held = self._end - self._start
            self._scratch[:held] = self._view[self._start:self._end]
            self._start, self._end = 0, held
        return self._view[self._end:]

    def filled(self, count: int) -> list[Frame]:
        """``count`` bytes were written into the buffer :meth:`get_buffer` gave: the frames completed."""
        if self._body is not None:
            self._got += count
            if self._got < len(self._body):
                return []
            frame = self._frame
            self._body.release()
            self._frame = self._body = None
            return [frame]
        if self._skip:
            self._skip -= count
            return []
        self._end += count
        return self._decode()

    def feed(self, data: bytes) -> list[Frame]:
        """Decode bytes received elsewhere (they are copied in, as a read would have put them)."""
        frames: list[Frame] = []
        with memoryview(data) as rest:
            while rest:
                buffer = self.get_buffer()
                count = min(len(buffer), len(rest))
                buffer[:count] = rest[:count]
                frames += self.filled(count)
                rest = rest[count:]
        return frames

    def _decode(self) -> list[Frame]:
        frames: list[Frame] = []
        view, start, end = self._view, self._start, self._end
        while end - start >= HEAD_SIZE:
            kind, flags, status, tag, meta_len, body_len = HEAD.unpack_from(self._scratch, start)
            if kind not in KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            meta_end = start + HEAD_SIZE + meta_len
            if end < meta_end:
                break
            available = end - meta_end
            # MAX_BODY_MB bounds what clients send, not the values pipeline steps pass to each other
            if body_len > self.max_body and not (kind == REQUEST and flags & PIPE_IN):
                frames.append(Frame(kind, status, tag, bytes(view[start + HEAD_SIZE:meta_end]), b"", body_len, flags))
                if available < body_len:
                    self._skip = body_len - available
                    start = end
                    break
                start = meta_end + body_len
            elif available >= body_len:
                frames.append(Frame(kind, status, tag, bytes(view[start + HEAD_SIZE:meta_end]),
                                    bytes(view[meta_end:meta_end + body_len]), 0, flags))
                start = meta_end + body_len
            elif body_len >= OWN_BUFFER:
                body = bytearray(body_len)
                body[:available] = view[meta_end:end]
                self._frame = Frame(kind, status, tag, bytes(view[start + HEAD_SIZE:meta_end]), body, 0, flags)
                self._body, self._got = memoryview(body), available
                start = end
                break
            else:
                break  # a small body: the rest comes with the next read
        if start == end:
            start = end = 0
        self._start, self._end = start, end
        return frames
