"""``SYSTEM_STATUS``: memory and disk of the machine, the gateway and each model server (GB)."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from typing import Any

import psutil

from .supervisor import ServerHandle

GB = 1024**3
INFO = "Memory Size is in GB. mem_servers counts each server process with its children."


def _gb(value: float) -> float:
    return round(value / GB, 2)


def process_tree_rss(pid: int | None) -> int:
    """RSS of a process and all its descendants, in bytes (0 if it is gone)."""
    if pid is None:
        return 0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for item in procs:
        try:
            total += item.memory_info().rss
        except psutil.Error:
            continue
    return total


def system_status(server_name: str, handles: Iterable[ServerHandle], disk_path: str = "/") -> dict[str, Any]:
    vm = psutil.virtual_memory()
    gateway_rss = psutil.Process().memory_info().rss
    servers = {h.name: process_tree_rss(h.pid) for h in handles}
    used = gateway_rss + sum(servers.values())
    disk = psutil.disk_usage(disk_path)
    return {
        "server_name": server_name,
        "info": INFO,
        "mem_total": _gb(vm.total),
        "mem_avail": _gb(vm.available),
        "mem_gateway": _gb(gateway_rss),
        "mem_servers": {name: _gb(rss) for name, rss in servers.items()},
        "mem_used": _gb(used),
        "mem_sys": _gb(max(0, vm.total - vm.available - used)),
        "disk_total": _gb(disk.total),
        "disk_avail": _gb(disk.free),
        "system": platform.platform(),
        "py": sys.version.split(" ")[0],
    }
