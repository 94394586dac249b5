"""``SYSTEM_STATUS``: memory and disk of the machine (or container), the gateway and each child (GB),
with alerts when memory or disk run low."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from typing import Any

import psutil

from ..supervision.handle import ChildHandle
from . import sysinfo

GB = 1024**3
MEM_ALERT_RATIO = 0.15
DISK_ALERT_RATIO = 0.10
INFO = ("Memory Size is in GB. mem_servers counts each child with all its processes. "
        "Inside a container mem_total/mem_avail are the container's limit and what is left of it.")


def _gb(value: float) -> float:
    return round(value / GB, 2)


def process_tree_rss(pid: int | None) -> int:
    """RSS of a process and all its descendants, in bytes (0 if it is gone)."""
    usage = sysinfo.process_tree_usage(pid)
    return usage[0] if usage else 0


def memory_mb(handles: Iterable[ChildHandle]) -> dict[str, float | None]:
    """RSS in MB of the gateway and of each child with its descendants (None when not running)."""
    out: dict[str, float | None] = {"gateway": round(psutil.Process().memory_info().rss / 2**20, 1)}
    for handle in handles:
        usage = sysinfo.process_tree_usage(handle.pid)
        out[handle.name] = round(usage[0] / 2**20, 1) if usage else None
    return out


def system_status(server_name: str, handles: Iterable[ChildHandle], disk_path: str = "/") -> dict[str, Any]:
    """``{"SYSTEM_STATUS": ..., "SYSTEM_ALERTS": ...}`` for the gateway and its children."""
    memory = sysinfo.memory()
    gateway_rss = psutil.Process().memory_info().rss
    children = {h.name: process_tree_rss(h.pid) for h in handles}
    used = gateway_rss + sum(children.values())
    disk = psutil.disk_usage(disk_path)
    status = {
        "server_name": server_name,
        "info": INFO,
        "mem_source": memory.source,
        "mem_total": _gb(memory.total),
        "mem_avail": _gb(memory.available),
        "mem_gateway": _gb(gateway_rss),
        "mem_servers": {name: _gb(rss) for name, rss in children.items()},
        "mem_used": _gb(used),
        "mem_sys": _gb(max(0, memory.total - memory.available - used)),
        "disk_total": _gb(disk.total),
        "disk_avail": _gb(disk.free),
        "system": platform.platform(),
        "py": sys.version.split(" ")[0],
    }
    mem_alert = memory.available < MEM_ALERT_RATIO * memory.total
    disk_alert = disk.free < DISK_ALERT_RATIO * disk.total
    alerts = []
    if mem_alert:
        alerts.append(f"Memory below {MEM_ALERT_RATIO} threshold.")
    if disk_alert:
        alerts.append(f"Disk below {DISK_ALERT_RATIO} threshold.")
    return {
        "SYSTEM_STATUS": status,
        "SYSTEM_ALERTS": {"mem_alert": mem_alert, "disk_alert": disk_alert, "alerts": alerts},
    }
