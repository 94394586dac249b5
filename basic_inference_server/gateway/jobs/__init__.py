"""Durable asynchronous jobs: ``POST /jobs`` (or ``/run`` with ``Prefer: respond-async``) now,
the result later (``GET /jobs/<id>``), nothing lost across crashes. See the jobs guide."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import GatewayConfig
from ..apikeys import ApiKeys
from ..routing.router import Router
from ..routing.runpath import RunPath
from .access import Access
from .backend import open_store
from .batches import PREFIX as BATCHES
from .batches import BatchesPath
from .dispatcher import Dispatcher
from .routes import PREFIX, JobsPath
from .shared import SharedQueue
from .stats import JobsCollector, JobStats
from .storethread import StoreThread
from .webhooks import Webhooks, resolve_secret

__all__ = ["Jobs"]


@dataclass
class Jobs:
    """The job system of one gateway: its store's thread, its dispatcher and its routes."""

    store: StoreThread
    dispatcher: Dispatcher
    webhooks: Webhooks
    path: JobsPath
    batches: BatchesPath
    shared: SharedQueue | None = None  # on a Redis store: leases, takeovers, the other gateways' events

    @classmethod
    def open(cls, folder: Path, config: GatewayConfig, loop: asyncio.AbstractEventLoop, router: Router,
             run_path: RunPath, keys: ApiKeys | None = None, admin_token: str | None = None) -> Jobs:
        """The jobs of the store in ``folder`` (made when missing), each its API key's once ``keys``
        are on (read by that key and ``admin_token``); ValueError for a webhook secret that is not
        one."""
        secret = resolve_secret(folder.parent)
        store = StoreThread(open_store(config, folder), loop)
        stats = JobStats()
        dispatcher = Dispatcher(loop, store, router, run_path, config.job_max_attempts, config.job_ttl, stats)
        webhooks = Webhooks(loop, store, secret, config.webhook_retry_s, config.webhook_allowed_hosts, stats)
        dispatcher.on_ended = webhooks.kick
        loop.call_soon_threadsafe(dispatcher.start)
        loop.call_soon_threadsafe(webhooks.start)
        shared = None
        if store.store.shared:
            shared = SharedQueue(loop, store, dispatcher, config.job_lease_s)
            loop.call_soon_threadsafe(shared.start)
        path = JobsPath(store, dispatcher, router, config.json_limits, config.webhook_allowed_hosts,
                        Access(keys, admin_token))
        return cls(store, dispatcher, webhooks, path, BatchesPath(path), shared)

    @property
    def stats(self) -> JobStats:
        return self.dispatcher.stats

    def collector(self) -> JobsCollector:
        """Its figures for GET /metrics."""
        return JobsCollector(self.stats)

    def routes(self) -> list[tuple[bytes, Any]]:
        """(path, handler) of the routes the HTTP front answers in its loop."""
        return [(PREFIX.encode(), self.path), (BATCHES.encode(), self.batches)]

    def close(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        """Stop dispatching, and stop the store once what the loop has given it is committed
        (from any thread but the loop's)."""
        stopped = threading.Event()

        def stop() -> None:
            self.dispatcher.close()
            if self.shared is not None:
                self.shared.close()
            self.webhooks.close()
            self.store.stop()
            stopped.set()
        loop.call_soon_threadsafe(stop)
        stopped.wait(timeout)
        self.store.join(timeout)
