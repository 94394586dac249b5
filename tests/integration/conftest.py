"""Real gateways in real processes, on free loopback ports, always torn down by process group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TOKEN = "test-admin-token-0123456789"
SERVER_PORTS = 8


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_range() -> tuple[int, int]:
    """Ports this test process picks from: below the ephemeral range (32768+), and under
    pytest-xdist a slice of its own, so that two test processes never pick overlapping blocks
    (a block is checked free when picked, and only bound later, by the gateway it is for)."""
    low, high = 20000, 32000
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (high - low) // max(1, workers)
    return low + worker * size, low + (worker + 1) * size


def free_port_block(count: int) -> int:
    """First port of ``count`` consecutive free ports (randomised to avoid other test runs)."""
    import random

    low, high = _port_range()
    for _ in range(200):
        base = random.randrange(low, high - count)
        if all(_bindable(p) for p in range(base, base + count)):
            return base
    raise RuntimeError("no block of free ports found")


class Gateway:
    """A gateway process started with ``python -m basic_inference_server.gateway.cli``."""

    PORTS = 1 + SERVER_PORTS  # its own and its model servers': picked free, checked free after it stopped

    def __init__(self, app_dir: Path, env: dict[str, str] | None = None, token: str | None = TOKEN):
        self.app_dir = app_dir
        base = free_port_block(self.PORTS)
        self.port = base
        self.first_server_port = base + 1
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = app_dir / "gateway_output.txt"
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(REPO)
        self.env.pop("BIS_ADMIN_TOKEN", None)
        if token is not None:
            self.env["BIS_ADMIN_TOKEN"] = token
        self.env.update(env or {})
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()
        self.known_pids: set[int] = set()

    def start(self, wait_ready: bool = True, extra_args: list[str] | None = None) -> Gateway:
        args = [
            sys.executable, "-m", "basic_inference_server.gateway.cli",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--first_server_port", str(self.first_server_port),
            "--last_server_port", str(self.first_server_port + SERVER_PORTS - 1),
            *(extra_args or []),
        ]
        self._out = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=self.app_dir, env=self.env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.known_pids.add(self.proc.pid)
        self.wait_for("/health", 200, timeout=20)
        if wait_ready:
            self.wait_for("/ready", 200, timeout=30)
        self.remember_children()
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, path: str, status: int, timeout: float) -> requests.Response:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"gateway exited with {self.proc.returncode}; output:\n{self.output()}")
            try:
                last = self.session.get(self.url + path, timeout=2)
                if last.status_code == status:
                    return last
            except requests.ConnectionError as exc:
                last = exc
            time.sleep(0.05)
        pytest.fail(f"{path} did not answer {status} in {timeout}s (last: {getattr(last, 'text', last)}); "
                    f"output:\n{self.output()}")

    def remember_children(self) -> None:
        if self.proc is None:
            return
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.known_pids.add(child.pid)
        except psutil.Error:
            pass

    # -- HTTP helpers ------------------------------------------------------------------------
    def post(self, path: str, payload: Any = None, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        if payload is not None and "data" not in kwargs:
            kwargs["json"] = payload
        return self.session.post(self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.session.get(self.url + path, **kwargs)

    def run(self, signature: str, **inputs: Any) -> requests.Response:
        return self.post("/run", {"SIGNATURE": signature, **inputs})

    def admin(self, path: str, payload: dict[str, Any]) -> requests.Response:
        return self.post(path, payload, headers={"Authorization": f"Bearer {self.token}"})

    def servers(self) -> dict[str, Any]:
        return self.post("/list_servers").json()["AVAIL_SERVERS"]

    def wait_state(self, name: str, state: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.servers().get(name, {})
            if info.get("STATE") == state:
                self.remember_children()
                return info
            time.sleep(0.05)
        pytest.fail(f"{name} not {state} after {timeout}s: {info}\n{self.output()}")

    def wait_workers(self, name: str, timeout: float = 5, **counts: int) -> None:
        """Wait until the model server of ``name`` reports at least ``counts`` of its workers'
        figures (``busy=1``: a request is running; ``queue=1``: one waits), read from its own
        /health (fresh, not the gateway's last probe)."""
        url = f"http://127.0.0.1:{self.servers()[name]['PORT']}/health"
        deadline = time.monotonic() + timeout
        workers: dict[str, Any] = {}
        while time.monotonic() < deadline:
            workers = requests.get(url, timeout=5).json().get("workers", {})
            if all(workers.get(key, 0) >= count for key, count in counts.items()):
                return
            time.sleep(0.01)
        pytest.fail(f"{name}: workers not at {counts} after {timeout}s: {workers}")

    # -- teardown ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Kill the whole process group; assert no process and no port is left behind."""
        if self.proc is None:
            return
        self.remember_children()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        for pid in self.known_pids:
            _kill_if_alive(pid)
        self.session.close()
        self._out.close()
        self.proc = None

    def assert_nothing_left(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [p for p in self.known_pids if _alive(p)]
            ports = [p for p in range(self.port, self.port + self.PORTS) if not _bindable(p)]
            if not alive and not ports:
                return
            time.sleep(0.1)
        pytest.fail(f"left behind: pids {alive}, ports {ports}\n{self.output()}")


class EndpointProcess(Gateway):
    """The harness's process handling (its own process group, stopped and checked at the end) for
    the endpoint command, listening on ``self.port``."""

    PORTS = 1  # the endpoint command listens on its one port (a gateway may bind the ports after it)

    def start(self, wait_ready: bool = True, extra_args: list[str] | None = None,
              command: list[str] | None = None) -> EndpointProcess:
        args = [*(command or [sys.executable, "-m", "basic_inference_server.gateway.cli"]), "endpoint",
                *(extra_args or ["echo"]), "--host", "127.0.0.1", "--port", str(self.port)]
        self._out = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=self.app_dir, env=self.env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.known_pids.add(self.proc.pid)
        if wait_ready:
            self.wait_for("/health", 200, timeout=30)
        return self


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_if_alive(pid: int) -> None:
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def make_app(tmp_path: Path, config: dict[str, Any], endpoint_files: list[Path] | None = None) -> Path:
    """An app folder: endpoints/ with the given files and config_gateway.txt."""
    app = tmp_path / "app"
    (app / "endpoints").mkdir(parents=True)
    for src in endpoint_files or sorted((FIXTURES / "endpoints").glob("*.py")):
        shutil.copy(src, app / "endpoints" / src.name)
    (app / "config_gateway.txt").write_text(json.dumps(config, indent=2))
    return app


@pytest.fixture
def gateway_factory(tmp_path: Path):
    """Start gateways for a test; each is stopped and checked for leftovers afterwards."""
    started: list[Gateway] = []

    def factory(config: dict[str, Any], endpoint_files: list[Path] | None = None, wait_ready: bool = True,
                env: dict[str, str] | None = None, start: bool = True, app_dir: Path | None = None) -> Gateway:
        app = app_dir or make_app(tmp_path / f"g{len(started)}", config, endpoint_files)
        gateway = Gateway(app, env=env)
        started.append(gateway)
        if start:
            gateway.start(wait_ready=wait_ready)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()
    for gateway in started:
        gateway.assert_nothing_left()


ECHO_CONFIG: dict[str, Any] = {
    "SERVER_NAME": "integration",
    "MAX_BODY_MB": 0.25,
    "SHUTDOWN_GRACE": 5,
    "CONFIG_ENDPOINTS": {
        "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 2, "PREFIX": "e1"},
        "echo_b": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "PREFIX": "e2"},
        "echo_off": {"SERVER_CLASS": "echo_model", "DISABLED": True},
        "helper": {"HOST": "NO_HOST", "PING_INTERVAL": 0.5},
    },
}


def module_gateway(tmp_path_factory, name: str, config: dict[str, Any]) -> Iterator[Gateway]:
    """A gateway of ``config`` for the tests of a module (``yield from`` it in a module fixture):
    stopped, and checked for leftovers, after the last."""
    gateway = Gateway(make_app(tmp_path_factory.mktemp(name), config)).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


@pytest.fixture(scope="module")
def echo_gateway(tmp_path_factory):
    """One gateway with two echo endpoints, shared by the tests of a module."""
    yield from module_gateway(tmp_path_factory, "echo", ECHO_CONFIG)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server of this test process (Debian's package, installed when missing and run
    as root); each gateway (or group of gateways sharing a queue) takes a database of its own
    with ``redis_server.url()``. Skipped loudly, with the reason, when none can start."""
    from bench.redisserver import NotInstalled, RedisServer, find_or_install

    try:
        server = RedisServer(find_or_install(), tmp_path_factory.mktemp("redis"), free_port_block(1)).start()
    except NotInstalled as exc:
        sys.__stderr__.write(f"\n*** REDIS TESTS SKIPPED: {exc}\n")
        pytest.skip(f"no redis-server: {exc}")
    yield server
    server.stop()
