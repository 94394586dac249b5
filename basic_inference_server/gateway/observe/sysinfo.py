"""Memory of the machine, or of the container when a cgroup limit applies (v1 and v2), and the
memory and CPU of a process tree.

Inside a container psutil reports the host's memory; the limit that matters is the cgroup's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


@dataclass(frozen=True)
class Memory:
    total: int
    available: int
    source: str  # "host", "cgroup v1" or "cgroup v2"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _inactive_file(stat_path: Path, key: str) -> int:
    """Page cache the kernel can drop: counted as available, as `docker stats` does."""
    try:
        for line in stat_path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory(root: Path = CGROUP_ROOT) -> Memory | None:
    """The cgroup's memory limit and usage, or None when no limit is set."""
    limit = _read_int(root / "memory.max")
    if limit is not None:
        usage = _read_int(root / "memory.current") or 0
        usage -= _inactive_file(root / "memory.stat", "inactive_file")
        return Memory(limit, max(0, limit - usage), "cgroup v2")
    v1 = root / "memory"
    limit = _read_int(v1 / "memory.limit_in_bytes")
    if limit is not None and limit < _UNLIMITED:
        usage = _read_int(v1 / "memory.usage_in_bytes") or 0
        usage -= _inactive_file(v1 / "memory.stat", "total_inactive_file")
        return Memory(limit, max(0, limit - usage), "cgroup v1")
    return None


def memory(root: Path = CGROUP_ROOT) -> Memory:
    host = psutil.virtual_memory()
    limited = cgroup_memory(root)
    if limited is not None and limited.total < host.total:
        return Memory(limited.total, min(limited.available, host.available), limited.source)
    return Memory(host.total, host.available, "host")


def descendants(pid: int) -> list[int] | None:
    """The pids of ``pid``'s children, grandchildren and so on, from Linux's per-thread
    ``/proc/<pid>/task/<tid>/children`` lists: a few reads per process of the tree. psutil's
    ``children(recursive=True)`` reads the ``stat`` file of every process on the machine instead
    (hundreds, or thousands on a busy host), once per server per health probe. None where those
    lists do not exist (a kernel built without CONFIG_PROC_CHILDREN, not Linux)."""
    if not _CHILDREN_LISTS:
        return None
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # gone meanwhile
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as listing:
                    children = [int(child) for child in listing.read().split()]
            except (OSError, ValueError):
                continue  # the thread ended meanwhile
            found += children
            todo += children
    return found


_CHILDREN_LISTS = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def process_tree_usage(pid: int | None) -> tuple[int, float] | None:
    """(RSS bytes, CPU seconds) of a process with all its descendants; None when it is gone."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        below = descendants(pid)
        if below is None:
            procs = [root, *root.children(recursive=True)]
        else:
            procs = [root]
            for child in below:
                try:
                    procs.append(psutil.Process(child))
                except psutil.Error:
                    continue  # exited meanwhile
    except psutil.Error:
        return None
    rss, cpu = 0, 0.0
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
        except psutil.Error:
            continue
    return rss, cpu
