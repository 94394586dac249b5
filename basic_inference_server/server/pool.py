"""The worker pool of one model server: threads and a bounded FIFO queue of calls.

Each worker is a thread that owns one ``FlaskWorker`` instance: it builds it, calls
``_load_model`` once, then takes calls from the shared queue (:mod:`.callqueue`) in arrival
order and runs their hooks (:mod:`.hooks`); an idle worker may wait at the channel's sockets and
run what it reads there itself (:mod:`.lobby`). Whoever queued a call (503 when the queue is full) learns that it ended
from its ``on_done``, called on the worker's thread; deadlines are the callers' (the channel's
gateway, the HTTP port). Nothing polls or sleeps; a worker is free again as soon as its hooks
return or raise.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import requestid
from ..errors import ModelError, ServingError, Unavailable
from .call import Call, CallState
from .callqueue import CallQueue
from .channel import replies_together
from .hooks import Hooks
from .lobby import Lobby
from .stats import ServerStats
from .worker import FlaskWorker

logger = logging.getLogger(__name__)

_RETIRE = object()  # control item: the worker that takes it stops


def _inputs_given(call: Call) -> None:
    """Without a reader of bodies, a call comes with its inputs."""
    raise ModelError("this worker pool reads no request bodies")


WorkerFactory = Callable[[int], FlaskWorker]


class WorkerPool:
    """``NR_WORKERS`` worker threads serving calls from one queue.

    Args:
        factory: builds worker number ``idx`` (constructor only; the pool calls ``_load_model``).
        max_queue: how many requests may wait for a free worker before new ones get 503.
        on_event: called with a short text for lifecycle events (shown in ``/notifications``).
    """

    def __init__(
        self,
        factory: WorkerFactory,
        max_queue: int,
        on_event: Callable[[str], None] | None = None,
        max_batch_size: int = 1,
        max_batch_wait: float = 0.005,
        warmup: list[dict[str, Any]] | None = None,
        accept: Callable[[Call], None] | None = None,
    ):
        self._factory = factory
        self.accept = accept or _inputs_given  # reads a call's body into its inputs (raises ServingError)
        self.warmup = warmup or []  # WARMUP_INPUTS: run by every worker once loaded
        self.max_batch_size = max_batch_size
        self.max_batch_wait = max_batch_wait
        self._queue = CallQueue(max_queue)
        self._on_event = on_event or (lambda text: None)
        self._mutex = threading.Lock()  # entered directly: Condition.__enter__ is a Python call
        self._changed = threading.Condition(self._mutex)  # loading and busy counts
        self._ids = itertools.count()
        self._threads: set[threading.Thread] = set()
        self.target = 0
        self.loading = 0
        self.ready = 0
        self.busy = 0
        self._busy_since: dict[int, float] = {}  # worker idx -> time.monotonic() its call started
        self.load_errors: list[str] = []
        self.measured = ServerStats()  # model time, queue time, batch sizes: GET /stats

    # -- size --------------------------------------------------------------------------------
    def start(self, count: int) -> None:
        """Start ``count`` workers; each loads its model in its own thread."""
        self.resize(count)

    def resize(self, count: int) -> dict[str, int]:
        """Grow or shrink to ``count`` workers. New workers load in the background."""
        with self._mutex:
            previous = self.target
            self.target = count
            grow = count - previous
            self.loading += max(grow, 0)
        for _ in range(grow):
            idx = next(self._ids)
            thread = threading.Thread(target=self._run, args=(idx,), name=f"worker-{idx}", daemon=True)
            with self._mutex:
                self._threads.add(thread)
            thread.start()
        for _ in range(-grow):
            self._queue.put_control(_RETIRE)
        if grow:
            self._on_event(f"Resizing workers: {previous} -> {count}")
        return {"previous": previous, "target": count}

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until no worker is loading; return False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            while self.loading:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # -- requests ----------------------------------------------------------------------------
    def enqueue(self, call: Call) -> None:
        """Queue a call without waiting for it; raise Unavailable (no worker yet) or Overloaded."""
        if not self.ready:
            raise Unavailable("no worker is ready yet (models are loading)")
        self._queue.put(call)

    def cancel(self, call: Call) -> None:
        """Nobody waits for ``call`` any more: out of the queue at once if it is still there (its
        place goes to the next request), else skipped when a worker takes it; a call already
        running finishes (a thread cannot be stopped) and its answer is dropped, except a
        generator, which is closed before its next item."""
        if call.leave() is CallState.LEFT_QUEUED and self._queue.remove(call):
            self._ended(call)

    def stop(self, timeout: float) -> bool:
        """Let queued calls finish, then stop every worker; False if some did not stop in time."""
        with self._mutex:
            threads = list(self._threads)
            self.target = 0
        for _ in threads:
            self._queue.put_control(_RETIRE)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def busy_for(self) -> list[float]:
        """How long each busy worker has been on its current call, in seconds."""
        now = time.monotonic()
        with self._mutex:
            return [now - since for since in self._busy_since.values()]

    def stats(self) -> dict[str, Any]:
        with self._mutex:
            return {
                "total": self.target,
                "ready": self.ready,
                "loading": self.loading,
                "busy": self.busy,
                "failed": len(self.load_errors),
                "queue": self._queue.depth,
                "max_queue": self._queue.max_calls,
            }

    def _ended(self, call: Call) -> None:
        """End ``call`` (its answer goes out); count it when its client had left."""
        was = call.finish()
        if was in (CallState.LEFT_QUEUED, CallState.LEFT_RUNNING):
            stage = "queued" if was is CallState.LEFT_QUEUED else "running"
            self.measured.cancelled(stage)
            logger.debug("Call %d (request %s) cancelled while %s: its client left", call.call_id, call.request_id,
                         stage)

    # -- the worker thread -------------------------------------------------------------------
    def _run(self, idx: int) -> None:
        hooks = self._load(idx)
        if hooks is not None:
            try:
                self._serve(hooks, idx)
            finally:
                with self._mutex:
                    self.ready -= 1
                    self._changed.notify_all()
        with self._mutex:
            self._threads.discard(threading.current_thread())

    def _load(self, idx: int) -> Hooks | None:
        started = time.monotonic()
        try:
            worker = self._factory(idx)
            worker._load_model()
            hooks = Hooks(worker, self.max_batch_size, self._ended)
            hooks.warm(self.warmup)
        except BaseException as exc:  # user code: SystemExit from a model must not hang the load
            logger.exception("Worker %d failed to load its model", idx)
            with self._mutex:
                self.loading -= 1
                self.target -= 1
                self.load_errors.append(f"worker {idx}: {type(exc).__name__}: {exc}")
                self._changed.notify_all()
            self._on_event(f"Worker {idx} failed to load: {type(exc).__name__}: {exc}")
            return None
        with self._mutex:
            self.loading -= 1
            self.ready += 1
            self._changed.notify_all()
        if self.warmup:
            logger.info("Worker %d warmed up with %d input(s)", idx, len(self.warmup))
        logger.info("Worker %d loaded in %.2fs", idx, time.monotonic() - started)
        return hooks

    def _read(self, items: list[Call]) -> list[Call]:
        """The calls of ``items`` to run: each one's body read into its inputs (on this worker's
        thread); one whose client has gone is skipped, and one whose body is refused is answered
        at once with its error, alone (the rest of a batch runs)."""
        calls = []
        for call in items:
            if call.take() and call.raw is not None:
                try:
                    self.accept(call)
                except ServingError as exc:
                    call.error = exc
                except Exception as exc:  # an answer must leave whatever the body does
                    token = requestid.bind(call.request_id)
                    logger.exception("Call %d: reading the body failed", call.call_id)
                    requestid.unbind(token)
                    call.error = ModelError(f"the request could not be read: {type(exc).__name__}")
                if call.stream is not None and call.left:
                    call.stream.cancel()  # its client left while its stream was being made
            if call.left or call.error is not None:  # its client is gone, or its body was refused
                with replies_together():
                    self._ended(call)
            else:
                calls.append(call)
        return calls

    def attach(self, lobby: Lobby) -> None:
        """From now, an idle worker without batching may wait at the channel's sockets and run
        what it reads there (:mod:`.callqueue`, :mod:`.lobby`)."""
        self._queue.lobby = lobby

    def _serve(self, hooks: Hooks, idx: int) -> None:
        batching = self.max_batch_size > 1
        while True:
            if batching:
                items = self._queue.get_batch(self.max_batch_size, self.max_batch_wait)
            else:
                items = [self._queue.take()]
            if items[0] is _RETIRE:
                logger.info("Worker %d retired", idx)
                return
            self._serve_items(hooks, idx, items, batching)

    def _serve_items(self, hooks: Hooks, idx: int, items: list[Call], batching: bool) -> None:
        """Run one call, or one batch, on this worker and answer it."""
        started = time.monotonic()
        with self._mutex:
            self.busy += 1
            self._busy_since[idx] = started
        calls = self._read(items)
        if not calls:
            with self._mutex:
                self.busy -= 1
                del self._busy_since[idx]
            return
        # Log lines written by the hooks carry the request id (all of a batch's ids for _predict).
        token = requestid.bind(calls[0].request_id if len(calls) == 1 else ",".join(c.request_id for c in calls))
        try:
            for call in calls:
                call.worker_idx = idx
            if batching:
                hooks.run_batch(calls)
            else:
                hooks.run(calls[0])
        except BaseException as exc:  # nothing may leave a worker busy or a client waiting
            logger.exception("Worker %d: unexpected %s", idx, type(exc).__name__)
            for call in calls:
                if call.error is None:
                    call.error = ModelError(f"{type(exc).__name__}: {exc}")
        finally:
            requestid.unbind(token)
            self.measured.record_batch([started - call.enqueued for call in calls], time.monotonic() - started,
                                       batching)
            with self._mutex:
                self.busy -= 1
                del self._busy_since[idx]
            with replies_together():
                for call in calls:
                    self._ended(call)
