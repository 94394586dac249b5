"""Running the queued jobs on the model servers, in the gateway's event loop, behind ``/run``.

Interactive traffic goes first: a job is sent to a model server only while the server has a
worker (a batch's place, with batching) that no request holds, counting ``/run``'s and the jobs'
alike. So a job never waits in a server's queue ahead of an interactive request: a ``/run`` may
wait for a job that is running, never for the backlog. A backlog fills every spare place at
once, so a batching endpoint serves it in full batches.

Jobs are claimed from the store (QUEUED to RUNNING, one more attempt) before they are sent, so
after a crash the ones that were running run again (at least once, up to JOB_MAX_ATTEMPTS). How
an attempt ends: the server's answer (200: SUCCEEDED; 503: back to the queue, not counted; 502:
run again; any other: FAILED at once), or no answer: the server was not reached (back to the
queue, not counted), the connection was lost (run again), the endpoint's REQUEST_TIMEOUT passed
(FAILED, 504).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import jsonutil, requestid
from ...errors import ServerDied, ServingError
from ...transport.frames import PLAIN, STREAM
from ...transport.gather import Pieces
from ..remote.client import NotRun
from ..routing.forward import transport_error
from ..routing.outcome import Failure, Misroute, Outcome, Reply
from ..routing.router import Router
from ..routing.runpath import RunPath
from ..routing.upstream import ConnectFailed, ConnectionLost
from .backend import Store
from .records import JobRecord, JobState, collected
from .stats import REFRESH, JobStats, StoreFigures
from .storethread import StoreThread

logger = logging.getLogger(__name__)

TICK = 0.02  # how often spare places are looked for while jobs are queued
REFUSED_PAUSE = 0.5  # seconds an endpoint that answered 503 gets no job
PURGE_EVERY = 60.0


@dataclass(slots=True)
class _Running:
    job: JobRecord
    handle: Any
    channel: Any
    sent: float
    tag: int | None = None
    items: int = 0  # a streaming endpoint's items so far (kept in the store, not here)
    first: bytes = b""  # the first, kept in the store once a second comes or the end says it is one


class Dispatcher:
    def __init__(self, loop: asyncio.AbstractEventLoop, store: StoreThread, router: Router, run_path: RunPath,
                 max_attempts: int, ttl: float, stats: JobStats | None = None):
        self.loop = loop
        self.stats = stats or JobStats()
        self.store = store
        self.router = router
        self.run_path = run_path
        self.max_attempts = max_attempts
        self.ttl = ttl
        self.queued: dict[str, int] = {}  # signature -> jobs QUEUED in the store
        self.running: dict[str, _Running] = {}  # job id -> its attempt in flight
        self._claiming: set[str] = set()
        self._paused: dict[str, float] = {}  # signature -> monotonic time it gets jobs again
        self._waiters: dict[str, list[Callable[[], None]]] = {}  # job id -> told when it ends
        self._followers: dict[str, list[Callable[[int, bytes | None], None]]] = {}  # job id -> told each item
        self._tick_due = False  # a look is due at the next turn of the loop
        self._timer: asyncio.TimerHandle | None = None  # the look every TICK while jobs wait
        self._closed = False
        self.on_ended: Callable[[], None] = lambda: None  # a job has ended (its webhook may be due)

    def freed(self, handle: Any) -> None:
        """A request (a /run, a job) has left ``handle``'s server: its place may go to a job at once."""
        if self.queued.get(handle.endpoint.name):
            self.kick()

    def start(self) -> None:
        """Recover what a gateway that stopped left RUNNING, learn the queue, then dispatch."""
        self.refresh(recover=True)
        self.loop.call_later(PURGE_EVERY, self._purge)
        self._count()

    def refresh(self, recover: bool = False) -> None:
        """Learn the queue's counts from the store again; ``recover``: first queue again what a
        gateway that stopped left RUNNING (at start; on a shared store, once its leases ran out)."""
        def done(result: Any, error: ServingError | None) -> None:
            if error is not None:
                logger.error("Jobs: reading the queue from the store failed: %s", error)
                return
            (requeued, failed), counts = result
            if requeued or failed:
                logger.warning("Jobs: %d job(s) left running by a gateway that stopped queued again, %d failed after "
                               "JOB_MAX_ATTEMPTS=%d attempts", requeued, failed, self.max_attempts)
            self.queued = counts
            self.kick()

        max_attempts = self.max_attempts
        self.store.call(lambda s: (s.recover(max_attempts, time.time()) if recover else (0, 0), s.queued_counts()),
                        done)

    def close(self) -> None:
        self._closed = True

    # -- the queue ----------------------------------------------------------------------------------
    def submitted(self, job: JobRecord) -> None:
        self.queued[job.signature] = self.queued.get(job.signature, 0) + 1
        self.kick()

    def kick(self) -> None:
        """Look for spare places at the next turn of the loop (a place was freed, a job queued)."""
        if not self._tick_due and not self._closed:
            self._tick_due = True
            self.loop.call_soon(self._tick)

    def _timed(self) -> None:
        self._timer = None
        self._tick()

    def _tick(self) -> None:
        """Claim jobs for the spare places; while jobs wait, look again every TICK (a /run that
        ends frees a place without telling this)."""
        self._tick_due = False
        now = time.monotonic()
        waiting = False
        for signature, count in self.queued.items():
            if count <= 0:
                continue
            waiting = True
            if signature in self._claiming or self._paused.get(signature, 0.0) > now or self.router.admission.draining:
                continue
            spare = self._spare(signature)
            if spare:
                self._claiming.add(signature)
                asked = min(spare, count)
                self.store.call(lambda s, sig=signature, n=asked: _claim(s, sig, n),
                                lambda result, error, sig=signature, n=asked: self._claimed(sig, n, result, error))
        # While jobs wait, a place freed by any request is offered to them at once.
        self.router.admission.freed = self.freed if waiting and not self._closed else None
        if waiting and self._timer is None and not self._closed:
            self._timer = self.loop.call_later(TICK, self._timed)

    def _spare(self, signature: str) -> int:
        """Places of READY servers of ``signature`` that no request holds (workers x batch size)."""
        spare = 0
        for handle in self.router.table.routes.servers.get(signature, ()):
            if handle.routable:
                spare += max(0, handle.capacity - handle.endpoint.max_queue - handle.inflight.count)
        return spare

    def _claimed(self, signature: str, asked: int, result: Any, error: ServingError | None) -> None:
        self._claiming.discard(signature)
        if error is not None:
            logger.error("Jobs: claiming jobs of %s failed: %s", signature, error)
            return
        jobs, left = result
        if left is not None:  # a shared store: the others claim too, it says what is left
            self.queued[signature] = left
        else:  # fewer than asked: the store's queue is empty now, whatever this count said
            self.queued[signature] = max(0, self.queued.get(signature, 0) - len(jobs)) if len(jobs) == asked else 0
        for job in jobs:
            self._send(job)
        self.kick()

    def _send(self, job: JobRecord) -> None:
        replicas = [h for h in self.router.table.routes.servers.get(job.signature, ()) if h.routable]
        if not replicas:  # gone since the claim: back to the queue, not counted
            self._requeue(job, counted=False)
            return
        handle = self.router.least_busy(replicas)
        try:
            self.router.admission.enter(handle)
        except ServingError:
            self._requeue(job, counted=False)
            return
        body, job.body = job.body or b"", None
        running = self.running[job.job_id] = _Running(job, handle, self.run_path.channel(handle), time.monotonic())
        self.stats.attempt(job.signature)
        token = requestid.bind(job.job_id)
        try:
            endpoint = handle.endpoint
            # Over the channel, a job asks for its items one by one (kept for GET /jobs/<id>/events);
            # a remote server is asked for the whole answer (its HTTP stream cannot say PLAIN).
            running.tag = running.channel.send(job.job_id, job.signature, body, endpoint.request_timeout,
                                               lambda outcome: self._answered(running, outcome),
                                               lambda item: self._item(running, item), endpoint.stream_idle_timeout,
                                               endpoint.stream_timeout, not handle.is_remote, job=True)
        finally:
            requestid.unbind(token)

    # -- the items of a job on a streaming endpoint -------------------------------------------------------
    def _item(self, running: _Running, item: bytes) -> None:
        """An item of a streaming endpoint's job: kept (in the store, for GET /jobs/<id>/events, and
        here, for its RESULT), shown to who follows it, and acknowledged at once (nobody reads
        slower than the store writes)."""
        job = running.job
        if self.running.get(job.job_id) is not running:
            return
        index = running.items
        running.items += 1
        running.handle.progress += 1
        if not index:
            running.first = item  # a plain answer's only item is no item to keep (the end says which)
        else:
            self._keep(job, index - 1 if index == 1 else index, [running.first, item] if index == 1 else [item])
        if running.tag is not None:
            running.channel.grant(running.tag, 1)
        for told in list(self._followers.get(job.job_id, ())):
            told(index, item)

    def _keep(self, job: JobRecord, first: int, items: list[bytes]) -> None:
        self.store.call(lambda s: s.add_items(job.job_id, first, items), _ignore)

    def follow(self, job_id: str, told: Callable[[int, bytes | None], None]) -> Callable[[], None]:
        """``told(index, item)`` for each new item of job ``job_id``, ``told(-1, None)`` once it has
        ended; returns what stops it."""
        return _subscribe(self._followers, job_id, told)

    # -- an attempt ends ------------------------------------------------------------------------------
    def _answered(self, running: _Running, outcome: Outcome) -> None:
        job, handle = running.job, running.handle
        if self.running.get(job.job_id) is not running:
            return  # cancelled meanwhile
        del self.running[job.job_id]
        self.router.admission.exit(handle)  # (its place is free: freed() looks for the next job at once)
        handle.progress += 1
        if isinstance(outcome, Reply):
            self.stats.answered(job.signature, time.monotonic() - running.sent)
        if running.items == 1 and not (isinstance(outcome, Reply) and outcome.flags & PLAIN):
            self._keep(job, 0, [running.first])  # a stream that ended after one item: kept too
        match outcome:
            case Reply(status=200):
                self._succeeded(running, outcome)
            case Reply(status=503):
                self._paused[job.signature] = time.monotonic() + REFUSED_PAUSE
                self._requeue(job, counted=False)
            case Reply(status=502):
                self._retry(job, outcome.body)
            case Reply():
                self._finish(job, JobState.FAILED, outcome.status, outcome.body)
            case Misroute():
                self._finish(job, JobState.FAILED, 502, _error(ServerDied("the model server read another "
                                                                          "SIGNATURE in the job's body")))
            case Failure(error=ConnectFailed()) | Failure(error=NotRun()):
                self._paused[job.signature] = time.monotonic() + REFUSED_PAUSE
                self._requeue(job, counted=False)
            case Failure(error=ConnectionLost() as lost):
                self._retry(job, _error(transport_error(handle, lost)))
            case Failure(error=error):
                failure = transport_error(handle, error)
                self._finish(job, JobState.FAILED, failure.status, _error(failure))

    def _succeeded(self, running: _Running, reply: Reply) -> None:
        """RESULT: what /run answers; for a stream, its items collected from the store (on the store's
        thread, after the items written before: no stream is held in memory for it)."""
        relay, flat, job, count = self.router.relay, self.router.is_flat(running.handle), running.job, running.items

        def answer(store: Store) -> bytes:
            body = reply.body
            if reply.flags & STREAM:
                plain = bool(reply.flags & PLAIN)
                items = [running.first] if plain else store.items(job.job_id, 0, count)
                body = collected(items, reply.body, plain)
            relayed = relay(reply.status, body, reply.meta, flat)[1]
            return relayed.joined() if isinstance(relayed, Pieces) else relayed
        self._finish(job, JobState.SUCCEEDED, 200, answer)

    def _retry(self, job: JobRecord, answer: bytes) -> None:
        if job.attempts < self.max_attempts:
            self._requeue(job, counted=True)
        else:
            self._finish(job, JobState.FAILED, 502, answer)

    def _requeue(self, job: JobRecord, counted: bool) -> None:
        def done(moved: Any, error: ServingError | None) -> None:
            if error is None and moved:
                self.queued[job.signature] = self.queued.get(job.signature, 0) + 1
                self.kick()
        self.store.call(lambda s: s.requeue(job, counted), done)

    def _finish(self, job: JobRecord, state: JobState, status: int,
                answer: bytes | Callable[[Store], bytes]) -> None:
        """Record its end; ``answer`` may be made on the store's thread (from what the store holds)."""
        def done(_moved: Any, error: ServingError | None) -> None:
            if error is not None:
                logger.error("Jobs: recording the end of %s failed: %s", job.job_id, error)
            self._ended(job.job_id)
            self.kick()

        def finish(store: Store) -> bool:
            final, code = state, status
            try:
                body = answer(store) if callable(answer) else answer
            except (ValueError, TypeError) as exc:  # an answer that is not what /run would relay
                final, code = JobState.FAILED, 502
                body = _error(ServerDied(f"the model server's answer could not be read: {exc}"))
            return store.finish(job, final, code, body, time.time())
        self.store.call(finish, done)

    # -- cancelling and waiting --------------------------------------------------------------------------
    def cancelled(self, job_id: str, signature: str, was: JobState, here: bool = True) -> None:
        """The store has cancelled a job (from ``was``; ``here``: on this gateway, else on another,
        which tells that it ended too): a running attempt here is cancelled."""
        if was is JobState.QUEUED:
            self.queued[signature] = max(0, self.queued.get(signature, 0) - 1)
        self.drop(job_id)
        if here:
            self._ended(job_id)
            self.kick()

    def drop(self, job_id: str) -> None:
        """Stop this gateway's attempt at ``job_id`` (cancelled, or taken over by another gateway):
        its place is freed, and its server skips it or closes its generator."""
        running = self.running.pop(job_id, None)
        if running is not None:
            self.router.admission.exit(running.handle)
            if running.tag is not None:
                running.channel.cancel(running.tag)

    # -- what other gateways of a shared store did (:mod:`.shared`) ---------------------------------------
    def noticed(self, signature: str, count: int) -> None:
        self.queued[signature] = self.queued.get(signature, 0) + count
        self.kick()

    def ended_elsewhere(self, job_id: str) -> None:
        self.drop(job_id)
        self._ended(job_id)
        self.kick()

    def item_elsewhere(self, job_id: str, index: int) -> None:
        for told in list(self._followers.get(job_id, ())):
            told(index, None)  # (None: read it from the store)

    def wake_all(self) -> None:
        """Who waits here looks at the store again (events may have been missed)."""
        for job_id in list(self._waiters):
            for told in self._waiters.pop(job_id, ()):
                told()
        for followers in list(self._followers.values()):
            for told in list(followers):
                told(0, None)

    def wait(self, job_id: str, told: Callable[[], None]) -> Callable[[], None]:
        """Call ``told`` once job ``job_id`` ends; returns what forgets the wait."""
        return _subscribe(self._waiters, job_id, told)

    def _ended(self, job_id: str) -> None:
        for told in self._waiters.pop(job_id, ()):
            told()
        for follower in self._followers.pop(job_id, ()):
            follower(-1, None)
        self.on_ended()

    def _count(self) -> None:
        """Refresh the store's figures (jobs by state, oldest queued) every REFRESH seconds."""
        if self._closed:
            return

        def counted(figures: Any, error: ServingError | None) -> None:
            if error is None:
                self.stats.store = figures
        self.store.call(StoreFigures.count, counted)
        self.loop.call_later(REFRESH, self._count)

    def _purge(self) -> None:
        if self._closed:
            return
        before = time.time() - self.ttl

        def done(count: Any, error: ServingError | None) -> None:
            if count:
                logger.info("Jobs: %d finished job(s) older than JOB_TTL purged", count)
        self.store.call(lambda s: s.purge(before), done)
        self.loop.call_later(PURGE_EVERY, self._purge)


def _claim(store: Store, signature: str, count: int) -> tuple[list[JobRecord], int | None]:
    """Claim jobs (on the store's thread); on a shared store, also how many are left queued."""
    jobs = store.claim(signature, count, time.time())
    return jobs, store.queued_counts([signature]).get(signature, 0) if store.shared else None


def _subscribe(table: dict[str, list[Any]], job_id: str, told: Any) -> Callable[[], None]:
    """Add ``told`` to ``table[job_id]``; returns what takes it out again."""
    table.setdefault(job_id, []).append(told)

    def forget() -> None:
        listeners = table.get(job_id)
        if listeners and told in listeners:
            listeners.remove(told)
            if not listeners:
                del table[job_id]
    return forget


def _ignore(_result: Any, _error: ServingError | None) -> None:
    pass


def _error(exc: ServingError) -> bytes:
    return jsonutil.dumps_bytes(exc.to_body())
