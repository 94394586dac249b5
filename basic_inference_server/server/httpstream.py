"""A streamed answer on the model server's own HTTP port (clients that call a server directly).

The gateway streams over the internal channel; this is the same stream for a client of the
server's HTTP port: the request's items are written as SSE or NDJSON
(:mod:`~basic_inference_server.transport.streamformat`) as the worker yields them. The WSGI
server pulls the chunks; each chunk it takes gives the worker credit for one more item, so a
client that reads slowly holds back its own generator only. When the client goes away, the
WSGI server closes the body and the request is cancelled (dropped from the queue, or its
generator closed). ``STREAM_IDLE_TIMEOUT`` and ``STREAM_TIMEOUT`` apply as at the gateway.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import jsonutil, requestid
from ..errors import RequestTimeout, ServingError
from ..transport.streamformat import StreamFormat
from .pool import Job

if TYPE_CHECKING:
    from .app import ServerState

_END = object()


class HttpStream:
    """The WSGI body of one streamed answer (iterate it; ``close()`` cancels what is left)."""

    def __init__(self, state: ServerState, fmt: StreamFormat, inputs: dict[str, Any], call_id: int,
                 request_id: str):
        self.state = state
        self.fmt = fmt
        self._chunks: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.out = state.stream_out(self._queue_item, self._wake)
        self.job = Job(inputs, call_id, request_id, on_done=self._done, stream=self.out)
        self.error: ServingError | None = None  # the request failed before its first item
        self._started = time.monotonic()
        self._first: Any = None
        self._entered = False

    @property
    def content_type(self) -> str:
        return self.fmt.content_type

    def start(self) -> HttpStream:
        """Queue the request and wait for its first item or its end (errors raise here, before
        any byte of the answer is written, so that they keep their status)."""
        self.state.inflight.enter()
        self._entered = True
        try:
            self.state.pool.enqueue(self.job)
        except BaseException:
            self._exit()
            raise
        self._first = self._next_chunk()
        if self.error is not None:
            self._exit()
            raise self.error
        return self

    def __iter__(self) -> Iterator[bytes]:
        chunk = self._first
        while chunk is not _END:
            yield chunk
            chunk = self._next_chunk()

    def close(self) -> None:
        """The WSGI server is done with the body (all of it sent, or the client left)."""
        if not self.job.finished:
            self.state.pool.cancel(self.job)
        self._exit()

    # -- from the worker -----------------------------------------------------------------------------
    def _queue_item(self, item: bytes) -> None:
        with self._cond:
            self._chunks.append((self.fmt.item(item), True))

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _done(self, job: Job) -> None:
        if job.cancelled:
            return
        token = requestid.bind(job.request_id)
        try:
            self._end(job)
        finally:
            requestid.unbind(token)

    def _end(self, job: Job) -> None:
        items, (status, body, _flags) = self.state.stream_end(job)
        for item in items:
            self._queue_item(item)
        if status == 200:
            final = self.fmt.end(body)
        elif not job.stream.count:
            with self._cond:
                self.error = job.error or ServingError("streamed answer failed")
                self._chunks.append(_END)
                self._cond.notify()
            return
        else:
            final = self.fmt.error(body)
        job.stream.end(lambda: self._finish(final))
        self._wake()

    def _finish(self, final: bytes) -> None:
        with self._cond:
            self._chunks.append((final, False))
            self._chunks.append(_END)

    # -- in the WSGI server's thread -----------------------------------------------------------------
    def _next_chunk(self) -> Any:
        idle, total = self.state.stream_idle_timeout, self.state.stream_timeout
        with self._cond:
            deadline = min(time.monotonic() + idle, self._started + total)
            while not self._chunks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            entry = self._chunks.popleft() if self._chunks else None
        if entry is None:
            return self._timed_out(idle, total)
        if entry is _END:
            return _END
        chunk, is_item = entry
        if is_item:
            self.out.grant(1)  # the WSGI server has taken it: the worker may send one more
        return chunk

    def _timed_out(self, idle: float, total: float) -> Any:
        self.state.pool.cancel(self.job)
        over = time.monotonic() - self._started >= total
        exc = RequestTimeout(f"stream took longer than STREAM_TIMEOUT={total:g}s" if over
                             else f"no item within STREAM_IDLE_TIMEOUT={idle:g}s")
        if not self.out.count:
            self.error = exc
            return _END
        with self._cond:
            self._chunks.append(_END)
        return self.fmt.error(jsonutil.dumps_bytes(exc.to_body()))

    def _exit(self) -> None:
        if self._entered:
            self._entered = False
            self.state.inflight.exit()
