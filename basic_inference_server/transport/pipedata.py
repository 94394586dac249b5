"""Values passed between the steps of a pipeline: binary, never JSON.

A step's ``_post_process`` result is pickled (protocol 5) with its large buffers out of band: a
numpy array's data is not copied into the pickle, it is written after it as it is, and the next
step reads it as a read-only view of what it received (arrays arrive as arrays, of the same
dtype and shape; everything else pickle keeps arrives as it was). Layout, integers big-endian::

    b"BISP"  u32 buffers  u64 pickle length  u64 length of each buffer...  pickle  buffers...

A step with several parents (a pipeline given as a graph) receives ``{parent name: its
output}``: the gateway joins the parents' values without reading them (:func:`join`)::

    b"BISM"  u32 parents  then per parent: u16 name length, name (UTF-8), u64 value length
    then the values, in the same order

Only the gateway sends these to a model server, over the server's own Unix socket (mode 0600),
and only what another model server of the same deployment made: a client's body is never taken
for one (the channel's PIPE_IN flag is the gateway's, see :mod:`.frames`), which is what makes
unpickling them safe.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from typing import Any

MAGIC, JOINED = b"BISP", b"BISM"
_HEAD = struct.Struct(">4sIQ")
_LENGTH = struct.Struct(">Q")
_COUNT = struct.Struct(">4sI")
_NAME = struct.Struct(">H")


class PipeDataError(ValueError):
    """What came is not a value of this format."""


def encode(value: Any) -> list[bytes | memoryview]:
    """``value`` as pieces to write as they are (the header and pickle, then each out-of-band
    buffer, never joined)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]  # (ValueError for a buffer that is not contiguous)
    head = _HEAD.pack(MAGIC, len(raws), len(data)) + b"".join(_LENGTH.pack(raw.nbytes) for raw in raws)
    return [head, data, *raws]


def decode(body: bytes | bytearray | memoryview) -> Any:
    """The value of a body :func:`encode` made (or :func:`join` joined), its arrays read-only
    views of ``body``."""
    view = memoryview(body).toreadonly()
    if bytes(view[:4]) == JOINED:
        return {name: decode(part) for name, part in _parts(view)}
    if len(view) < _HEAD.size or bytes(view[:4]) != MAGIC:
        raise PipeDataError("not a value passed between pipeline steps")
    _magic, count, length = _HEAD.unpack_from(view)
    at = _HEAD.size + count * _LENGTH.size
    if at + length > len(view):
        raise PipeDataError("a pipeline value cut short")
    lengths = [_LENGTH.unpack_from(view, _HEAD.size + n * _LENGTH.size)[0] for n in range(count)]
    data, at = view[at:at + length], at + length
    buffers = []
    for size in lengths:
        if at + size > len(view):
            raise PipeDataError("a pipeline value cut short")
        buffers.append(view[at:at + size])
        at += size
    return pickle.loads(data, buffers=buffers)


def join(parts: Sequence[tuple[str, bytes | bytearray | memoryview]]) -> list[bytes | bytearray | memoryview]:
    """The values of several parents, as one body for the step that needs them all (read as
    ``{name: value}``); pieces to write as they are."""
    head = bytearray(_COUNT.pack(JOINED, len(parts)))
    for name, value in parts:
        encoded = name.encode()
        head += _NAME.pack(len(encoded)) + encoded + _LENGTH.pack(len(value))
    return [bytes(head), *(value for _name, value in parts)]


def _parts(view: memoryview) -> list[tuple[str, memoryview]]:
    _magic, count = _COUNT.unpack_from(view)
    at, names = _COUNT.size, []
    for _ in range(count):
        (size,) = _NAME.unpack_from(view, at)
        name = bytes(view[at + _NAME.size:at + _NAME.size + size]).decode()
        at += _NAME.size + size
        names.append((name, _LENGTH.unpack_from(view, at)[0]))
        at += _LENGTH.size
    parts = []
    for name, size in names:
        if at + size > len(view):
            raise PipeDataError("a joined pipeline value cut short")
        parts.append((name, view[at:at + size]))
        at += size
    return parts
