"""The worker pool of one model server: threads, a bounded FIFO queue, deadlines.

Each worker is a thread that owns one ``FlaskWorker`` instance: it builds it, calls
``_load_model`` once, then takes jobs from the shared queue in arrival order. A request thread
puts its job in the queue (503 when full) and waits for it with the endpoint's deadline (504).
Nothing polls or sleeps; a worker is free again as soon as its hooks return or raise.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import requestid
from ..errors import ModelError, Overloaded, RequestTimeout, ServingError, Unavailable
from .channel import replies_together
from .job import Job
from .stats import ServerStats
from .worker import FlaskWorker

logger = logging.getLogger(__name__)

_RETIRE = object()  # control item: the worker that takes it stops


def _inputs_given(job: Job) -> None:
    """Without a reader of bodies, a job comes with its inputs."""
    raise ModelError("this worker pool reads no request bodies")


class JobQueue:
    """FIFO with a bound on waiting jobs; control items bypass the bound.

    While a worker gathers a batch, a new job wakes it only once the batch can be full (or at
    the batch's deadline), not once per job: each wake-up is a thread switch that the threads
    still delivering requests would pay for.
    """

    def __init__(self, max_jobs: int):
        self.max_jobs = max_jobs
        self._items: deque[Any] = deque()
        self._jobs = 0
        self._wanted = 1  # waiting jobs worth waking a worker for
        self._cond = threading.Condition(threading.Lock())

    def put(self, job: Job) -> None:
        with self._cond:
            if self._jobs >= self.max_jobs:
                raise Overloaded(f"request queue is full ({self.max_jobs} waiting); retry later")
            self._jobs += 1
            job.enqueued = time.monotonic()
            self._items.append(job)
            if len(self._items) >= self._wanted:
                self._cond.notify()

    def remove(self, job: Job) -> bool:
        """Take a job out of the queue; False when a worker already has it (or it is done)."""
        with self._cond:
            try:
                self._items.remove(job)
            except ValueError:
                return False
            self._jobs -= 1
            return True

    def put_control(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            if item.__class__ is Job:
                self._jobs -= 1
            return item

    def get_batch(self, max_jobs: int, window: float) -> list[Any]:
        """Up to ``max_jobs`` jobs in arrival order, waiting at most ``window`` seconds, once the
        first is taken, for more to come. A control item is returned alone."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            first = self._items.popleft()
            if first.__class__ is not Job:
                return [first]
            self._jobs -= 1
            batch = [first]
            # From now, not from when the first job arrived: a job that waited for the worker
            # would otherwise leave at once with whatever had queued behind it, and closed-loop
            # clients would settle into half batches that never merge again.
            deadline = time.monotonic() + window
            while len(batch) < max_jobs:
                if self._items:
                    if self._items[0].__class__ is not Job:
                        break
                    batch.append(self._items.popleft())
                    self._jobs -= 1
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wanted = max_jobs - len(batch)
                self._cond.wait(remaining)
                self._wanted = 1
            if self._items:
                self._cond.notify()  # what is left is for another worker
            return batch

    @property
    def depth(self) -> int:
        return self._jobs


WorkerFactory = Callable[[int], FlaskWorker]


class WorkerPool:
    """``NR_WORKERS`` worker threads serving jobs from one queue.

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
        accept: Callable[[Job], None] | None = None,
    ):
        self._factory = factory
        self.accept = accept or _inputs_given  # reads a job's body into its inputs (raises ServingError)
        self.warmup = warmup or []  # WARMUP_INPUTS: run by every worker once loaded
        self.max_batch_size = max_batch_size
        self.max_batch_wait = max_batch_wait
        self._queue = JobQueue(max_queue)
        self._on_event = on_event or (lambda text: None)
        self._lock = threading.Condition(threading.Lock())
        self._ids = itertools.count()
        self._threads: set[threading.Thread] = set()
        self.target = 0
        self.loading = 0
        self.ready = 0
        self.busy = 0
        self._busy_since: dict[int, float] = {}  # worker idx -> time.monotonic() its job started
        self.load_errors: list[str] = []
        self.measured = ServerStats()  # model time, queue time, batch sizes: GET /stats

    # -- size --------------------------------------------------------------------------------
    def start(self, count: int) -> None:
        """Start ``count`` workers; each loads its model in its own thread."""
        self.resize(count)

    def resize(self, count: int) -> dict[str, int]:
        """Grow or shrink to ``count`` workers. New workers load in the background."""
        with self._lock:
            previous = self.target
            self.target = count
            grow = count - previous
            self.loading += max(grow, 0)
        for _ in range(grow):
            idx = next(self._ids)
            thread = threading.Thread(target=self._run, args=(idx,), name=f"worker-{idx}", daemon=True)
            with self._lock:
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
        with self._lock:
            while self.loading:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    # -- requests ----------------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        """Queue a job without waiting for it; raise Unavailable (no worker yet) or Overloaded."""
        if not self.ready:
            raise Unavailable("no worker is ready yet (models are loading)")
        self._queue.put(job)

    def cancel(self, job: Job) -> None:
        """Nobody waits for ``job`` any more: out of the queue at once if it is still there (its
        place goes to the next request), else skipped when a worker takes it; a job already
        running finishes (a thread cannot be stopped) and its answer is dropped, except a
        generator, which is closed before its next item."""
        job.cancelled = True
        if job.stream is not None:  # (a worker that makes the stream later looks at `cancelled` after)
            job.stream.cancel()  # a worker waiting to send its next item stops waiting
        if self._queue.remove(job):
            self._cancelled(job, "queued")
            job.finish()

    def submit(self, inputs: dict[str, Any], call_id: int, timeout: float, request_id: str = requestid.NONE) -> Job:
        """Queue a request and wait for its answer; raise a ServingError on any failure."""
        job = Job(inputs, call_id, request_id)
        self.enqueue(job)
        if not job.done.wait(min(timeout, threading.TIMEOUT_MAX)):
            job.cancelled = True
            raise RequestTimeout(f"request did not finish within REQUEST_TIMEOUT={timeout:g}s")
        if job.error is not None:
            raise job.error
        return job

    def stop(self, timeout: float) -> bool:
        """Let queued jobs finish, then stop every worker; False if some did not stop in time."""
        with self._lock:
            threads = list(self._threads)
            self.target = 0
        for _ in threads:
            self._queue.put_control(_RETIRE)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def busy_for(self) -> list[float]:
        """How long each busy worker has been on its current job, in seconds."""
        now = time.monotonic()
        with self._lock:
            return [now - since for since in self._busy_since.values()]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self.target,
                "ready": self.ready,
                "loading": self.loading,
                "busy": self.busy,
                "failed": len(self.load_errors),
                "queue": self._queue.depth,
                "max_queue": self._queue.max_jobs,
            }

    def _cancelled(self, job: Job, stage: str) -> None:
        self.measured.cancelled(stage)
        logger.debug("Call %d (request %s) cancelled while %s: its client left", job.call_id, job.request_id, stage)

    # -- the worker thread -------------------------------------------------------------------
    def _run(self, idx: int) -> None:
        worker = self._load(idx)
        if worker is not None:
            try:
                self._serve(worker, idx)
            finally:
                with self._lock:
                    self.ready -= 1
                    self._lock.notify_all()
        with self._lock:
            self._threads.discard(threading.current_thread())

    def _load(self, idx: int) -> FlaskWorker | None:
        started = time.monotonic()
        try:
            worker = self._factory(idx)
            worker._load_model()
            self._warm(worker)
        except BaseException as exc:  # user code: SystemExit from a model must not hang the load
            logger.exception("Worker %d failed to load its model", idx)
            with self._lock:
                self.loading -= 1
                self.target -= 1
                self.load_errors.append(f"worker {idx}: {type(exc).__name__}: {exc}")
                self._lock.notify_all()
            self._on_event(f"Worker {idx} failed to load: {type(exc).__name__}: {exc}")
            return None
        with self._lock:
            self.loading -= 1
            self.ready += 1
            self._lock.notify_all()
        logger.info("Worker %d loaded in %.2fs", idx, time.monotonic() - started)
        return worker

    def _warm(self, worker: FlaskWorker) -> None:
        """Run WARMUP_INPUTS through the worker's hooks (in batches when it batches); the first
        failure raises, naming the input."""
        size = self.max_batch_size
        for start in range(0, len(self.warmup), size):
            jobs = [Job(copy.deepcopy(inputs), 0) for inputs in self.warmup[start:start + size]]
            try:
                if size > 1:
                    worker._bis_execute_batch(jobs)
                else:
                    jobs[0].result = worker._bis_execute(jobs[0].inputs, 0)
            except ServingError as exc:
                jobs[0].error = exc
            for number, job in enumerate(jobs, start + 1):
                if job.error is not None:
                    raise RuntimeError(f"WARMUP_INPUTS[{number - 1}] failed: {job.error.message}")
        if self.warmup:
            logger.info("Worker %d warmed up with %d input(s)", worker.worker_id, len(self.warmup))

    def _read(self, items: list[Job]) -> list[Job]:
        """The jobs of ``items`` to run: each one's body read into its inputs (on this worker's
        thread); one whose client has gone is skipped, and one whose body is refused is answered
        at once with its error, alone (the rest of a batch runs)."""
        jobs = []
        for job in items:
            if not job.cancelled and job.raw is not None:
                try:
                    self.accept(job)
                except ServingError as exc:
                    job.error = exc
                except Exception as exc:  # an answer must leave whatever the body does
                    token = requestid.bind(job.request_id)
                    logger.exception("Call %d: reading the body failed", job.call_id)
                    requestid.unbind(token)
                    job.error = ModelError(f"the request could not be read: {type(exc).__name__}")
                if job.stream is not None and job.cancelled:
                    job.stream.cancel()  # cancelled while its stream was being made
            if job.cancelled:  # its client is gone (timed out, or the gateway cancelled it): skip it
                self._cancelled(job, "queued")
                job.finish()
            elif job.error is not None:
                with replies_together():
                    job.finish()
            else:
                jobs.append(job)
        return jobs

    def _serve(self, worker: FlaskWorker, idx: int) -> None:
        batching = self.max_batch_size > 1
        while True:
            if batching:
                items = self._queue.get_batch(self.max_batch_size, self.max_batch_wait)
            else:
                items = [self._queue.get()]
            if items[0] is _RETIRE:
                logger.info("Worker %d retired", idx)
                return
            started = time.monotonic()
            with self._lock:
                self.busy += 1
                self._busy_since[idx] = started
            jobs = self._read(items)
            if not jobs:
                with self._lock:
                    self.busy -= 1
                    del self._busy_since[idx]
                continue
            # Log lines written by the hooks carry the request id (all of a batch's ids for _predict).
            token = requestid.bind(",".join(job.request_id for job in jobs))
            try:
                for job in jobs:
                    job.worker_idx = idx
                if batching:
                    worker._bis_execute_batch(jobs)
                else:
                    jobs[0].result = worker._bis_execute(jobs[0].inputs, jobs[0].call_id, jobs[0])
            except ServingError as exc:
                jobs[0].error = exc
            except BaseException as exc:  # nothing may leave a worker busy or a client waiting
                logger.exception("Worker %d: unexpected %s", idx, type(exc).__name__)
                for job in jobs:
                    if job.error is None:
                        job.error = ModelError(f"{type(exc).__name__}: {exc}")
            finally:
                requestid.unbind(token)
                self.measured.record_batch([started - job.enqueued for job in jobs], time.monotonic() - started,
                                           batching)
                with self._lock:
                    self.busy -= 1
                    del self._busy_since[idx]
                with replies_together():
                    for job in jobs:
                        if job.stopped_running:
                            self._cancelled(job, "running")
                        job.finish()
