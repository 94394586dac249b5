"""The job store's thread: operations from the event loop run here in groups, one transaction and
one commit (one ``fsync``) per group, and their results go back to the loop.

An operation is a function of the :class:`.backend.Store` and a callback the loop calls with
its result, or with the :class:`~basic_inference_server.errors.ServingError` it raised (each
operation has a savepoint of its own: one that fails leaves the others of its group in). Nothing
here blocks the loop: it only puts operations in a queue and gets one wake-up per group.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ...errors import ServingError
from .backend import Store

logger = logging.getLogger(__name__)

GROUP = 1024  # operations committed together at most
Done = Callable[[Any, ServingError | None], None]
Op = tuple[Callable[[Store], Any], Done, bool]  # the operation, what is told its result, durable


class StoreThread:
    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop):
        self.store = store
        self.loop = loop
        self._ops: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="job-store", daemon=True)
        self._thread.start()

    def call(self, op: Callable[[Store], Any], done: Done, durable: bool = False) -> None:
        """Run ``op(store)`` in the next group; ``done(result, error)`` in the loop once committed.
        ``durable``: its group is flushed to the disk before ``done`` (a submission, a cancel: what
        a client was promised); the others (claims, ends, reads) are written to the file, which a
        crash of the process never loses, and reach the disk with the next durable group or the
        next checkpoint (a power cut may lose them: a job then runs again, at least once)."""
        self._ops.put((op, done, durable))

    def stop(self) -> None:
        """Commit what is queued, then stop (:meth:`join` waits for it)."""
        self._ops.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        store = self.store
        while True:
            first = self._ops.get()
            group = [first]
            while len(group) < GROUP:
                try:
                    group.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            stop = None in group
            ops = [op for op in group if op is not None]
            results = self._commit(store, ops)
            if results:
                self.loop.call_soon_threadsafe(_deliver, results)
            if stop:
                store.close()
                return

    @staticmethod
    def _commit(store: Store, ops: list[Op]) -> list[tuple[Done, Any, Any]]:
        results: list[tuple[Done, Any, Any]] = []
        if not ops:
            return results
        try:
            store.begin(durable=any(durable for _op, _done, durable in ops))
            for op, done, _durable in ops:
                store.savepoint()
                try:
                    result = op(store)
                except ServingError as exc:
                    store.release(False)
                    results.append((done, None, exc))
                    continue
                except Exception as exc:  # a bug, the disk or the network: this operation fails, the group goes on
                    logger.exception("Job store operation failed")
                    store.release(False)
                    results.append((done, None, _failure(store, exc)))
                    continue
                store.release(True)
                results.append((done, result, None))
            for number, exc in store.commit().items():  # (Redis: writes sent at the commit, refused alone)
                logger.error("Job store: a write of this group was refused: %s", exc)
                results[number] = (results[number][0], None, _failure(store, exc))
        except Exception as exc:  # the commit itself failed (disk full, I/O error): nothing of the group holds
            logger.exception("Job store commit failed")
            store.rollback()
            error = ServingError(f"job store error: {type(exc).__name__}: {exc}", status=503)
            results = [(done, None, error) for _op, done, _durable in ops]
        return results


def _failure(store: Store, exc: Exception) -> ServingError:
    """An operation's unexpected exception as an error: 503 when the store could not be reached or
    written (try again later), 500 for anything else."""
    return ServingError(f"job store error: {type(exc).__name__}: {exc}", status=503 if store.is_outage(exc) else 500)


def _deliver(results: list[tuple[Done, Any, Any]]) -> None:
    for done, result, error in results:
        try:
            done(result, error)
        except Exception:
            logger.exception("Job store callback failed")
