"""Durable asynchronous jobs: ``POST /jobs`` (or ``/run`` with ``Prefer: respond-async``) now,
the result later (``GET /jobs/<id>``), nothing lost across crashes. See the jobs guide."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from ...config import GatewayConfig
from ..routing.router import Router
from ..routing.runpath import RunPath
from .dispatcher import Dispatcher
from .routes import PREFIX, JobsPath
from .store import JobStore
from .storethread import StoreThread

__all__ = ["PREFIX", "Jobs"]


@dataclass
class Jobs:
    """The job system of one gateway: its store's thread, its dispatcher and its routes."""

    store: StoreThread
    dispatcher: Dispatcher
    path: JobsPath

    @classmethod
    def open(cls, folder: Path, config: GatewayConfig, loop: asyncio.AbstractEventLoop, router: Router,
             run_path: RunPath) -> Jobs:
        store = StoreThread(JobStore(folder, config.job_store_max_bytes), loop)
        dispatcher = Dispatcher(loop, store, router, run_path, config.job_max_attempts, config.job_ttl)
        loop.call_soon_threadsafe(dispatcher.start)
        return cls(store, dispatcher, JobsPath(store, dispatcher, router, config.json_limits))

    def close(self, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        """Stop dispatching, and stop the store once what the loop has given it is committed
        (from any thread but the loop's)."""
        stopped = threading.Event()

        def stop() -> None:
            self.dispatcher.close()
            self.store.stop()
            stopped.set()
        loop.call_soon_threadsafe(stop)
        stopped.wait(timeout)
        self.store.join(timeout)
