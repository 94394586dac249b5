"""Notifications that workers and the model server leave for ``/notifications``.

One bounded buffer per model server; reading drains it. Entries are grouped on read by the
call id they belong to, ``INIT`` for those made before a worker's first call (for example in
``_load_model``), and ``GENERAL`` for the server's own lifecycle messages.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

GENERAL = "GENERAL"
INIT = "INIT"
MAX_NOTIFICATIONS = 1000


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"


class NotificationStore:
    """Thread-safe, bounded (oldest dropped), drained on read."""

    def __init__(self, maxlen: int = MAX_NOTIFICATIONS):
        self._items: deque[tuple[str, dict[str, Any]]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, bucket: str, notif_type: str, module: str, msg: Any, info: Any = None) -> None:
        entry = {"NOTIFICATION_TYPE": notif_type, "MODULE": module, "NOTIF": str(msg), "time": _now()}
        if info is not None:
            entry["INFO"] = info
        with self._lock:
            self._items.append((bucket, entry))

    def drain(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        grouped: dict[str, list[dict[str, Any]]] = {GENERAL: []}
        for bucket, entry in items:
            grouped.setdefault(bucket, []).append(entry)
        return grouped

    def __len__(self) -> int:
        return len(self._items)
