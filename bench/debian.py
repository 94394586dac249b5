"""Installing a Debian package a test or the benchmark needs (wrk, redis-server, Chromium) on a
clean machine, as CI's is: root only, with the package lists refreshed when the first try fails.
The test processes of one run (pytest-xdist) may ask at once: one installs while the others wait
on a lock file, then find the package there."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time

LOCK = "/tmp/basic_inference_server-apt.lock"


class NotInstalled(RuntimeError):
    """The package is not here and could not be installed (the message says why)."""


def install(package: str, timeout: float = 300.0) -> None:
    """``apt-get install -y package``; NotInstalled when it cannot be done here."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise NotInstalled(f"{package} is not installed and cannot be installed here: run "
                           f"`apt-get install -y {package}` as root")
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file closes)
        if not installed(package):  # another process may have installed it while this one waited
            _install(package, timeout)


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True,
                          check=False)
    return done.returncode == 0 and done.stdout.endswith("installed")


def _install(package: str, timeout: float) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + timeout
    output = ""
    # Without package lists (a fresh container), the first install fails: update them, then try again.
    for command in (["apt-get", "install", "-y", "-q", package], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", package]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise NotInstalled(f"installing {package} took longer than {timeout:g}s ({' '.join(command)})") from None
        output = done.stdout[-2000:] + done.stderr[-2000:]
        if command[1] == "install" and done.returncode == 0:
            return
    raise NotInstalled(f"`apt-get install -y {package}` failed:\n{output}")
