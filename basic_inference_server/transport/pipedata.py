"""Values passed between the steps of a pipeline: binary, never JSON.

A step's ``_post_process`` result is pickled (protocol 5) with its large buffers out of band: a
numpy array's data is not copied into the pickle, it goes after it as it is, and the next step
reads it as a read-only view (arrays arrive as arrays, of the same dtype and shape; everything
else pickle keeps arrives as it was). A buffer of ``shm_at`` bytes or more does not travel on the
channel at all: it is written once into a memfd (anonymous shared memory) that the producing
server holds, and the next step maps that memfd read-only through ``/proc/<pid>/fd/<fd>`` (no
copy). The producer closes its memfds when the gateway releases the value (the pipeline request
ended) or its channel connection closes; a killed process's are closed by the kernel, and a
mapping is gone with the arrays that view it: nothing is ever left in ``/dev/shm`` or held after
the request. Layout, integers big-endian::

    b"BISP"  u32 buffers  u64 pickle length
    per buffer: u8 where (0: follows the pickle, 1: a memfd), u64 length, u32 pid, u32 fd
    pickle  the buffers that follow, in order

A step with several parents (a pipeline given as a graph) receives ``{parent name: its
output}``: the gateway joins the parents' values without reading them (:func:`join`)::

    b"BISM"  u32 parents  then per parent: u16 name length, name (UTF-8), u64 value length
    then the values, in the same order

Only the gateway sends these to a model server, over the server's own Unix socket (mode 0600),
and only what another model server of the same gateway made: a client's body is never taken for
one (the channel's PIPE_IN flag is the gateway's, see :mod:`.frames`), which is what makes
unpickling them, and opening the memfds they name, safe.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

MAGIC, JOINED = b"BISP", b"BISM"
_HEAD = struct.Struct(">4sIQ")
_BUFFER = struct.Struct(">BQII")  # where, length, pid, fd
INLINE, MEMFD = 0, 1
_LENGTH = struct.Struct(">Q")
_COUNT = struct.Struct(">4sI")
_NAME = struct.Struct(">H")


class PipeDataError(ValueError):
    """What came is not a value of this format."""


def encode(value: Any, shm_at: int | None = None, context: Any = None) -> tuple[list[bytes | memoryview], list[int]]:
    """``value`` as pieces to write as they are (the header and pickle, then each out-of-band
    buffer under ``shm_at`` bytes, never joined), and the memfds holding the others, which the
    caller keeps open until the value is released (then :func:`release` them). ``context`` goes
    with the value from step to step, unseen by the hooks (what a V2 request asked of its answer)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps((value, context), protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]  # (ValueError for a buffer that is not contiguous)
    head, inline, fds = bytearray(_HEAD.pack(MAGIC, len(raws), len(data))), [], []
    pid = os.getpid()
    try:
        for raw in raws:
            if shm_at is not None and raw.nbytes >= shm_at:
                fd = _memfd_of(raw)
                fds.append(fd)
                head += _BUFFER.pack(MEMFD, raw.nbytes, pid, fd)
            else:
                inline.append(raw)
                head += _BUFFER.pack(INLINE, raw.nbytes, 0, 0)
    except BaseException:
        release(fds)
        raise
    return [bytes(head), data, *inline], fds


def release(fds: list[int]) -> None:
    """The memfds of values released: kept a moment for the next values (:class:`_Pool`), else closed
    (their memory goes once no step maps it any more)."""
    _POOL.give(fds)


class _Pool:
    """Memfds released, kept for IDLE_S seconds (at most KEPT of them) so that the next value of a
    like size is written into pages the kernel has already: a new memfd's pages are allocated and
    zeroed as they are written, which costs more than the copy itself. What has been idle IDLE_S
    is closed by a thread that runs while any is kept: nothing is held long after the last request.
    (A released value's views are not read any more: every step that took it has answered, or the
    request was given up, when a step cancelled while it ran may read bytes written since, never
    past the memfd's end: a memfd is reused only for a value at least as large, and is never
    shrunk; that step's answer is discarded.)"""

    KEPT, IDLE_S = 8, 2.0

    def __init__(self) -> None:
        self._idle: list[tuple[float, int, int]] = []  # (released at, capacity, fd), oldest first
        self._lock = threading.Lock()
        self._sweeping = False

    def take(self, size: int) -> int:
        """A memfd to write ``size`` bytes into: an idle one of up to twice that, else a new one."""
        with self._lock:
            for n, (_at, capacity, fd) in enumerate(self._idle):
                if size <= capacity <= 2 * size:
                    del self._idle[n]
                    return fd
        return os.memfd_create("bis-pipeline", os.MFD_CLOEXEC)

    def give(self, fds: list[int]) -> None:
        closing = []
        with self._lock:
            now = time.monotonic()
            for fd in fds:
                try:
                    self._idle.append((now, os.fstat(fd).st_size, fd))
                except OSError:
                    continue
            while len(self._idle) > self.KEPT:
                closing.append(self._idle.pop(0)[2])
            sweep = bool(self._idle) and not self._sweeping
            self._sweeping = self._sweeping or sweep
        _close(closing)
        if sweep:
            threading.Thread(target=self._sweep, name="memfd-pool", daemon=True).start()

    def _sweep(self) -> None:
        while True:
            time.sleep(self.IDLE_S / 2)
            with self._lock:
                old = time.monotonic() - self.IDLE_S
                closing = [fd for at, _capacity, fd in self._idle if at <= old]
                self._idle = [entry for entry in self._idle if entry[0] > old]
                if not self._idle:
                    self._sweeping = False
            _close(closing)
            if not self._sweeping:
                return


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_POOL = _Pool()


def _memfd_of(raw: memoryview) -> int:
    """A memfd holding ``raw``: the one copy a large buffer costs between two steps."""
    fd = _POOL.take(raw.nbytes)
    try:
        data, written = raw.cast("B"), 0
        while written < len(data):  # (the kernel copies it into the memfd's pages: no page faults here)
            written += os.pwrite(fd, data[written:], written)
    except BaseException:
        os.close(fd)
        raise
    return fd


def decode(body: bytes | bytearray | memoryview) -> Any:
    """The value of a body :func:`encode` made (or :func:`join` joined), its arrays read-only
    views of ``body``, or of the memfds it names. PipeDataError when it cannot be read, MemfdGone
    when a memfd it names is no longer there (its server stopped)."""
    return decode_with_context(body)[0]


def decode_with_context(body: bytes | bytearray | memoryview) -> tuple[Any, Any]:
    """(value, the context that came with it: of the first parent, for a join)."""
    view = memoryview(body).toreadonly()
    if bytes(view[:4]) == JOINED:
        decoded = [(name, decode_with_context(part)) for name, part in _parts(view)]
        return {name: value for name, (value, _context) in decoded}, decoded[0][1][1] if decoded else None
    if len(view) < _HEAD.size or bytes(view[:4]) != MAGIC:
        raise PipeDataError("not a value passed between pipeline steps")
    _magic, count, length = _HEAD.unpack_from(view)
    at = _HEAD.size + count * _BUFFER.size
    if at + length > len(view):
        raise PipeDataError("a pipeline value cut short")
    entries = [_BUFFER.unpack_from(view, _HEAD.size + n * _BUFFER.size) for n in range(count)]
    data, at = view[at:at + length], at + length
    buffers = []
    for where, size, pid, fd in entries:
        if where == MEMFD:
            buffers.append(_mapped(pid, fd, size))
            continue
        if at + size > len(view):
            raise PipeDataError("a pipeline value cut short")
        buffers.append(view[at:at + size])
        at += size
    value, context = pickle.loads(data, buffers=buffers)
    return value, context


class MemfdGone(PipeDataError):
    """A memfd a value names is gone: the server that made it stopped, or released it."""


def _mapped(pid: int, fd: int, size: int) -> memoryview:
    """The memfd ``fd`` of process ``pid``, mapped read-only (no copy): a view that keeps the
    mapping for as long as something holds it."""
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MemfdGone(f"the value of the step before is gone (process {pid}: {exc.strerror})") from None
    try:
        if size == 0:
            return memoryview(b"")
        # MAP_POPULATE: the pages are mapped in one go, not faulted in one by one as they are read
        return memoryview(mmap.mmap(own, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ))
    finally:
        os.close(own)


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
