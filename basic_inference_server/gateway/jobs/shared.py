"""One queue for many gateways, in each gateway's event loop: on a shared (Redis) store, this
gateway renews the leases of the jobs it runs, takes over the jobs of gateways that stopped
renewing theirs, and hears what the others change (see :mod:`.redisstore`).

- Every third of ``JOB_LEASE_S``: its running jobs' leases are renewed; a job whose lease was
  taken over meanwhile (this gateway could not reach Redis for a whole lease) is dropped here,
  its model server told to skip it: its new attempt runs elsewhere.
- Every half of ``JOB_LEASE_S`` (from a random start, so the gateways spread out): the leases
  that ran out are taken over, their jobs queued again (one attempt more, or FAILED past
  JOB_MAX_ATTEMPTS), and the queue's counts read again.
- Events: a job queued elsewhere is claimed here when this gateway has spare places; a job that
  ended or was cancelled elsewhere wakes the ``?wait`` and event streams that wait for it here,
  and a new item of a job running elsewhere is read from the store by who follows it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from ...errors import ServingError
from .dispatcher import Dispatcher
from .records import JobState
from .storethread import StoreThread

logger = logging.getLogger(__name__)


class SharedQueue:
    def __init__(self, loop: asyncio.AbstractEventLoop, store: StoreThread, dispatcher: Dispatcher, lease_s: float):
        self.loop, self.store, self.dispatcher, self.lease_s = loop, store, dispatcher, lease_s
        self._unsubscribe = lambda: None
        self._closed = False

    def start(self) -> None:
        self._unsubscribe = self.store.store.subscribe(self._from_thread)
        self.loop.call_later(self.lease_s / 3, self._renew)
        self.loop.call_later(random.uniform(0.25, 0.75) * self.lease_s, self._take_over)

    def close(self) -> None:
        self._closed = True
        self._unsubscribe()

    def _from_thread(self, kind: str, args: list) -> None:
        """An event, from the events' thread: handled in the loop (none once it has closed)."""
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile, at shutdown
                self.loop.call_soon_threadsafe(self._heard, kind, args)

    def _renew(self) -> None:
        if self._closed:
            return
        jobs = [running.job for running in self.dispatcher.running.values()]
        if jobs:
            self.store.call(lambda s: s.renew(jobs), self._renewed)
        self.loop.call_later(self.lease_s / 3, self._renew)

    def _renewed(self, lost: Any, error: ServingError | None) -> None:
        if error is not None:
            logger.warning("Jobs: the leases of this gateway's running jobs could not be renewed (%s): past "
                           "JOB_LEASE_S=%gs another gateway runs them again", error, self.lease_s)
            return
        for job_id in lost or ():
            logger.warning("Jobs: job %s was taken over by another gateway (its lease ran out): dropped here", job_id)
            self.dispatcher.drop(job_id)

    def _take_over(self) -> None:
        if self._closed:
            return
        self.dispatcher.refresh(recover=True)
        self.loop.call_later(self.lease_s / 2, self._take_over)

    def _heard(self, kind: str, args: list) -> None:
        dispatcher = self.dispatcher
        match kind, args:
            case "queued", ["*", _count]:
                dispatcher.refresh()
            case "queued", [str(signature), int(count)]:
                dispatcher.noticed(signature, count)
            case "item", [str(job_id), int(index)]:
                dispatcher.item_elsewhere(job_id, index)
            case "ended", [str(job_id)]:
                dispatcher.ended_elsewhere(job_id)
            case "cancelled", [str(job_id), str(signature), str(was)]:
                dispatcher.cancelled(job_id, signature, JobState(was), here=False)
            case "resync", []:
                dispatcher.refresh()
                dispatcher.wake_all()
            case _:
                logger.debug("Jobs: an event not understood: %s %s", kind, args)
