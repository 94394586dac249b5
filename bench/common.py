"""Helpers shared by the bench scripts: free ports, and a gateway run in a temporary app folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

from basic_inference_server.gateway.supervision.ports import port_is_free
from bench.load import pinned

REPO = Path(__file__).resolve().parents[1]


def free_port_block(count: int, start: int) -> int:
    """First port of ``count`` consecutive free loopback ports from ``start``, below the
    ephemeral range (32768+) so that client connections never take them meanwhile."""
    for base in range(start, 32000 - count, 37):
        if all(port_is_free("127.0.0.1", port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no block of free ports below 32000")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM a process group started with ``start_new_session``; SIGKILL what is left of it after
    ``grace`` (the leader and any child that outlived it)."""
    deadline = time.monotonic() + grace
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.poll()
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if group_members(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


class GatewayRun:
    """A gateway on free loopback ports, with ``endpoint_files`` and ``config``, in a temp folder;
    pinned at launch to ``cpu`` (``taskset -c``) when given, so that its model servers are too."""

    def __init__(self, endpoint_files: list[Path], config: dict, servers: int, port_start: int,
                 env: dict[str, str] | None = None, cpu: str | None = None, app: Path | None = None):
        """``app``: the folder of a gateway run before (its cache, jobs included), started again."""
        self._tmp = tempfile.TemporaryDirectory() if app is None else None
        self.app = Path(self._tmp.name) if self._tmp is not None else app
        (self.app / "endpoints").mkdir(exist_ok=True)
        for path in endpoint_files:
            shutil.copy(path, self.app / "endpoints")
        (self.app / "config_gateway.txt").write_text(json.dumps(config))
        self.base = free_port_block(1 + servers, port_start)
        self.url = f"http://127.0.0.1:{self.base}"
        self._log = open(self.app / "gateway.txt", "wb")
        self.started = time.monotonic()
        command = [sys.executable, "-m", "basic_inference_server.gateway.cli", "--host", "127.0.0.1",
                   "--port", str(self.base), "--first_server_port", str(self.base + 1),
                   "--last_server_port", str(self.base + servers)]
        self.proc = subprocess.Popen(
            pinned(command, cpu),
            cwd=self.app, env={**os.environ, "PYTHONPATH": str(REPO), "BIS_ADMIN_TOKEN": "bench-admin-token-0123456789",
                               **(env or {})},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60, poll: float = 0.05) -> float | None:
        """Seconds from launch until ``/ready`` answered 200, or None after ``timeout``."""
        with requests.Session() as session:
            while time.monotonic() - self.started < timeout:
                try:
                    if session.get(self.url + "/ready", timeout=1).status_code == 200:
                        return time.monotonic() - self.started
                except requests.RequestException:
                    pass
                time.sleep(poll)
        return None

    def output(self) -> str:
        return (self.app / "gateway.txt").read_text(errors="replace")

    def server_headers(self, port: int) -> dict[str, str]:
        """What calling the model server on ``port`` directly takes: the secret its gateway wrote
        for it (readable by this user only)."""
        secret = (self.app / "_cache" / "_run" / "sockets" / f"{port}.secret").read_text().strip()
        return {"X-Endpoint-Token": secret}

    def stop(self, keep: bool = False) -> None:
        """Stop it (``keep``: leave its folder for a run started again on it; the folder goes when
        this one is stopped again, or garbage)."""
        stop_group(self.proc)
        if not self._log.closed:
            self._log.close()
        if self._tmp is not None and not keep:
            self._tmp.cleanup()
