"""Shared fixtures of the unit tests: worker pools that always stop, clean logging, endpoint folders."""

from __future__ import annotations

import logging
import os
import socket
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from basic_inference_server.server.pool import WorkerPool

# The property tests draw the same examples on every run (CI and `make test` stay repeatable);
# HYPOTHESIS_PROFILE=explore draws new ones each time, to look for what they have not met yet.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


class PoolKit:
    """Makes worker pools and the gates (events) that hold their workers inside a hook.

    At teardown every gate is opened, then every pool is stopped, so no thread outlives a test.
    """

    def __init__(self) -> None:
        self.pools: list[WorkerPool] = []
        self.gates: list[threading.Event] = []

    def gate(self) -> threading.Event:
        gate = threading.Event()
        self.gates.append(gate)
        return gate

    def pool(self, worker_factory: Callable[[int], Any], max_queue: int = 64, on_event=None,
             **options: Any) -> WorkerPool:
        pool = WorkerPool(worker_factory, max_queue, on_event=on_event, **options)
        self.pools.append(pool)
        return pool

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Poll ``predicate`` for pool state that no public call can block on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.002)
        return predicate()

    def close(self) -> list[WorkerPool]:
        for gate in self.gates:
            gate.set()
        return [pool for pool in self.pools if not pool.stop(2.0)]


@pytest.fixture
def kit() -> Iterator[PoolKit]:
    kit = PoolKit()
    yield kit
    stuck = kit.close()
    assert not stuck, "worker threads did not stop at teardown"


@pytest.fixture
def clean_root_logging() -> Iterator[None]:
    """Let a test install the process log handlers, then put the root logger back as it was."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    for handler in saved_handlers:
        if getattr(handler, "_bis_handler", False):
            root.removeHandler(handler)
    yield
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in saved_handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved_level)


class AppRoot:
    """A tmp app root with an endpoints package of a unique name (no cross-test import caching)."""

    def __init__(self, root: Path):
        self.root = root
        self.package = f"eps_{uuid.uuid4().hex[:12]}"
        self.folder = root / self.package
        self.folder.mkdir()

    def write(self, name: str, source: str) -> Path:
        path = self.folder / f"{name}.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return path


@pytest.fixture
def app_root(tmp_path: Path) -> Iterator[AppRoot]:
    saved_path = list(sys.path)
    root = AppRoot(tmp_path)
    yield root
    sys.path[:] = saved_path
    for name in [m for m in sys.modules if m == root.package or m.startswith(root.package + ".")]:
        del sys.modules[name]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to reach the network (schemas must come from the installed package)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
