"""Shared fixtures of the unit tests: worker pools that always stop, clean logging, endpoint folders."""

from __future__ import annotations

import contextlib
import json
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

from basic_inference_server.server.app import ServerState
from basic_inference_server.server.channel import ChannelServer
from basic_inference_server.server.notifications import NotificationStore
from basic_inference_server.server.pool import WorkerPool
from basic_inference_server.server.runpath import RunPath
from basic_inference_server.transport.frames import ITEM, REPLY, FrameReader, cancel_frame, request_head

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
        self.closers: list[Callable[[], None]] = []

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

    def serve(self, pool: WorkerPool, folder: Path, request_timeout: float = 5.0) -> ChannelPeer:
        """``pool`` behind a model server's /run (:class:`~basic_inference_server.server.runpath.RunPath`)
        and channel, as a model server runs them, and the gateway's end of that channel."""
        state = ServerState(name="unit", server_class="unit", class_name="UnitWorker", host_id="h0", pool=pool,
                            notifications=NotificationStore(), request_timeout=request_timeout,
                            max_body_bytes=1 << 20)
        channel = ChannelServer(str(folder / "unit.sock"), RunPath(state).from_channel, 1 << 20, cancel=pool.cancel)
        channel.start()
        pool.attach(channel.lobby)
        peer = ChannelPeer(channel.path)
        self.closers += [peer.close, channel.close]
        return peer

    def close(self) -> list[WorkerPool]:
        for closer in self.closers:
            closer()
        for gate in self.gates:
            gate.set()
        return [pool for pool in self.pools if not pool.stop(2.0)]


class Answer:
    """A model server's answer to one request: its status, its JSON body, the items before it."""

    def __init__(self, status: int, body: bytes, items: list[bytes], retry_after: str | None):
        self.status, self.items, self.retry_after = status, [json.loads(i) for i in items], retry_after
        self.body = json.loads(body) if body else None

    @property
    def error_type(self) -> str | None:
        return self.body["error"]["type"] if self.status >= 400 else None


class ChannelPeer:
    """The gateway's end of a model server's channel, blocking: requests written as the gateway
    writes them, answers read by one reader thread and handed to whoever waits for them."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._tags = iter(range(1, 1 << 31))
        self._lock = threading.Lock()
        self._answers: dict[int, Answer] = {}
        self._items: dict[int, list[bytes]] = {}
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, inputs: dict[str, Any], request_id: str = "rid", flags: int = 0) -> int:
        body = json.dumps(inputs).encode()
        with self._lock:
            tag = next(self._tags)
            self.sock.sendall(request_head(tag, request_id, "", len(body), flags) + body)
        return tag

    def wait(self, tag: int, timeout: float = 5.0) -> Answer | None:
        """The answer of ``tag``; None when none came in time (the request is then cancelled,
        as the gateway cancels a request past its deadline)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: tag in self._answers, timeout):
                with self._lock:
                    self.sock.sendall(cancel_frame(tag))
                return None
            return self._answers.pop(tag)

    def run(self, inputs: dict[str, Any], timeout: float = 5.0) -> Answer | None:
        return self.wait(self.send(inputs), timeout)

    def _read(self) -> None:
        reader = FrameReader()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            for frame in reader.feed(data):
                with self._arrived:
                    if frame.kind == ITEM:
                        self._items.setdefault(frame.tag, []).append(frame.body)
                    elif frame.kind == REPLY:
                        self._answers[frame.tag] = Answer(frame.status, frame.body, self._items.pop(frame.tag, []),
                                                          frame.meta.decode() or None)
                        self._arrived.notify_all()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


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
