"""Streamed answers inside a model server: a ``_predict`` that returns a generator.

A worker whose ``_predict`` returns an iterator is driven here, on the worker's thread: each
item goes through ``_post_process`` and then either to the request's :class:`StreamOut` (the
client asked for a stream) or into a list (it did not: the items are answered as one
``predict_result``). Between two items the worker looks whether the client has left; if it
has, the generator is closed (the user's code sees ``GeneratorExit`` at its ``yield``) and the
worker is free for the next request.

Backpressure: a :class:`StreamOut` sends an item only while it holds credit (the gateway gives
one back per item its client has taken, :mod:`~basic_inference_server.transport.frames`).
Items without credit wait in a small backlog; past it, ``put`` blocks the worker's thread until
the client reads or leaves (or the gateway's ``STREAM_IDLE_TIMEOUT`` gives up on it). A single
stream has no backlog (the generator waits at once); a batch has ``BATCH_BACKLOG`` items per
request, so that one slow reader slows the other requests of its batch only once it is that
far behind.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import jsonutil, requestid
from ..errors import ModelError, ServingError
from ..transport.frames import STREAM_WINDOW

if TYPE_CHECKING:
    from .job import Job
    from .worker import FlaskWorker

logger = logging.getLogger(__name__)

BATCH_BACKLOG = 32
_DONE = object()


class END_OF_STREAM:  # noqa: N801 - a marker, used as a value like None
    """Yield this as a request's item, in a batch's step, to end that request's stream."""

    def __init__(self) -> None:
        raise TypeError("END_OF_STREAM is a marker: use the class itself")


class StreamOut:
    """The items of one streamed request on their way out, bounded by the client's credit.

    ``send(item)`` queues an item for the wire and must not block (it is called under this
    stream's lock, which keeps the items in order whichever thread sends them); ``push()``, called
    after the lock is released, writes what was queued.
    """

    def __init__(self, send: Callable[[bytes], None], push: Callable[[], None], window: int = STREAM_WINDOW,
                 backlog: int = 0):
        self._send = send
        self._push = push
        self.credit = window
        self.backlog = backlog
        self.count = 0  # items accepted (sent or waiting)
        self.cancelled = False
        self._waiting: deque[bytes] = deque()
        self._final: Callable[[], None] | None = None
        self._cond = threading.Condition(threading.Lock())

    def put(self, item: bytes) -> bool:
        """Send ``item`` (JSON) when there is credit, else keep it; wait while more than the
        backlog is kept. False when the client has left (the item is dropped)."""
        with self._cond:
            if self.cancelled:
                return False
            self.count += 1
            self._waiting.append(item)
            sent = self._send_waiting()
            while len(self._waiting) > self.backlog and not self.cancelled:
                self._cond.wait()
            cancelled = self.cancelled
        if sent:
            self._push()
        return not cancelled

    def end(self, final: Callable[[], None]) -> None:
        """Queue the stream's last frame with ``final()`` once every kept item has been sent
        (at once, or when the credit for the last of them comes); never if the client left."""
        with self._cond:
            if self.cancelled:
                return
            if self._waiting:
                self._final = final
                return
            final()
        self._push()

    def grant(self, items: int) -> None:
        """The client has taken ``items`` more (a CREDIT frame): send what waits for them."""
        with self._cond:
            self.credit += items
            sent = self._send_waiting()
            if self._final is not None and not self._waiting:
                self._final()
                self._final, sent = None, True
            self._cond.notify_all()
        if sent:
            self._push()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._waiting.clear()
            self._final = None
            self._cond.notify_all()

    def _send_waiting(self) -> bool:
        """Send what the credit allows; True when something was sent."""
        sent = False
        while self._waiting and self.credit > 0:
            self._send(self._waiting.popleft())
            self.credit -= 1
            sent = True
        return sent


def is_stream(pred: Any) -> bool:
    """A ``_predict`` result that is streamed: a generator or any other iterator (not a list,
    tuple, dict, string or array, which are iterables but not iterators)."""
    return isinstance(pred, Iterator)


def relay(worker: FlaskWorker, items: Iterator[Any], job: Job | None) -> list[Any] | None:
    """Drive one request's generator: ``_post_process`` each item, then stream it (the job has
    a :class:`StreamOut`) or collect it (the returned list is its ``predict_result``)."""
    out = job.stream if job is not None else None
    collected: list[Any] | None = [] if out is None else None
    try:
        while True:
            if job is not None and job.cancelled:
                job.stopped_running = True
                return None
            item = _next(worker, items)
            if item is _DONE or item is END_OF_STREAM:
                break
            if item is None:
                continue  # nothing at this step
            result = worker._run_stage(worker._post_process, item)
            if collected is not None:
                collected.append(result)
            elif not out.put(_encode(result)):
                job.stopped_running = True
                return None
    finally:
        _close(items)
    if job is not None:
        job.streamed = True
    return collected


def relay_batch(worker: FlaskWorker, steps: Iterator[Any], jobs: list[Job]) -> None:
    """Drive a batch's generator: each step is a list with one item per request of the batch
    (``None``: nothing this step; ``END_OF_STREAM``: that request's stream ends). A request that
    ends, fails or is cancelled is finished at once; ``worker.cancelled_slots`` tells the
    generator which positions are no longer wanted. The generator is closed when no request of
    the batch is left, or when it ends."""
    live = dict(enumerate(jobs))
    collected: dict[int, list[Any]] = {i: [] for i, job in live.items() if job.stream is None}
    worker.cancelled_slots = set()
    try:
        while live:
            for slot, job in list(live.items()):
                if job.cancelled:
                    job.stopped_running = True
                    worker.cancelled_slots.add(slot)
                    _finish(live, slot)
            if not live:
                break
            step = _next(worker, steps)
            if step is _DONE:
                break
            if not hasattr(step, "__len__") or len(step) != len(jobs):
                got = len(step) if hasattr(step, "__len__") else type(step).__name__
                raise ModelError(f"a streaming batch's _predict must yield a list of {len(jobs)} items "
                                 f"(one per request), got {got}")
            for slot, item in enumerate(step):
                job = live.get(slot)
                if job is None or item is None:
                    continue
                if item is END_OF_STREAM:
                    _end(job, collected.get(slot))
                    _finish(live, slot)
                    continue
                _batch_item(worker, live, slot, job, item, collected)
    except ServingError as exc:
        for job in live.values():
            job.error = exc  # the batch's generator failed: every request still in it fails
        live.clear()
    finally:
        _close(steps)
        worker.cancelled_slots = set()
    for slot, job in live.items():
        _end(job, collected.get(slot))


def _batch_item(worker: FlaskWorker, live: dict[int, Job], slot: int, job: Job, item: Any,
                collected: dict[int, list[Any]]) -> None:
    worker._counter = job.call_id
    token = requestid.bind(job.request_id)
    try:
        result = worker._run_stage(worker._post_process, item)
        if job.stream is None:
            collected[slot].append(result)
        elif not job.stream.put(_encode(result)):
            job.stopped_running = True
            worker.cancelled_slots.add(slot)
            _finish(live, slot)
    except ServingError as exc:
        job.error = exc  # this request only
        _finish(live, slot)
    finally:
        requestid.unbind(token)


def _end(job: Job, collected: list[Any] | None) -> None:
    job.streamed = True
    if job.stream is None:
        job.result = collected


def _finish(live: dict[int, Job], slot: int) -> None:
    """Answer one request of a running batch now (its stream ended, failed or was cancelled)."""
    job = live.pop(slot)
    job.finish()


def _next(worker: FlaskWorker, items: Iterator[Any]) -> Any:
    """The generator's next item (``_DONE`` at its end); what it raises is a failure of ``_predict``."""
    return worker._run_stage(lambda it: next(it, _DONE), items, "_predict")


def _encode(result: Any) -> bytes:
    try:
        return jsonutil.dumps_bytes(result)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"an item of _post_process is not JSON-serialisable: {exc}") from None


def _close(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is None:
        return
    try:
        close()  # GeneratorExit at the generator's yield
    except Exception:
        logger.exception("Closing the stream's generator raised")
