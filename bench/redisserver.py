"""A real ``redis-server`` for the tests and the benchmark of the Redis job store.

Debian's package, installed with apt-get when it is missing and this runs as root (as CI does on
a clean machine), started on a loopback port in a folder of its own with its append-only file
written and fsynced at every write (``appendfsync always``: what the job store promises a
client it answered 202), and stopped by its pid. Nothing here is a fake: the gateways under
test talk to this process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .debian import NotInstalled, install


def find_or_install() -> str:
    """The path of ``redis-server``; installs Debian's package when missing (root only).
    :class:`.debian.NotInstalled` when it cannot be had."""
    if not shutil.which("redis-server"):
        install("redis-server")
    found = shutil.which("redis-server")
    if not found:
        raise NotInstalled("`apt-get install -y redis-server` left no redis-server on the PATH")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    DATABASES = 64  # one per gateway (or group of gateways) a test run starts

    def __init__(self, binary: str, folder: Path, port: int | None = None, appendfsync: str = "always",
                 cpu: str | None = None, password: str | None = None):
        """``cpu``: pinned there (``taskset -c``), as the benchmark pins the serving processes;
        ``password``: clients must give it (``requirepass``)."""
        self.binary, self.folder, self.port, self.cpu = binary, folder, port or free_port(), cpu
        self.password = password
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen | None = None
        self._next_db = 0

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                   "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                   "--databases", str(self.DATABASES), "--logfile", str(self.folder / "redis.log"),
                   *(["--requirepass", self.password] if self.password else [])]
        self.proc = subprocess.Popen(
            [*(["taskset", "-c", self.cpu] if self.cpu else []), *command],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NotInstalled(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise NotInstalled(f"redis-server did not answer PING within {timeout:g}s: {self.log()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def log(self) -> str:
        try:
            return (self.folder / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def url(self) -> str:
        """The address of a database of its own, empty, for the next gateway (or group of them)."""
        db = self._next_db % self.DATABASES
        self._next_db += 1
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
