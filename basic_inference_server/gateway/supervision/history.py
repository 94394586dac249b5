"""``SYSTEM_HISTORY``: startups, shutdowns, restarts and failures, kept in ``_cache/_data`` across runs.

File ``gw_state_history.json`` (the original's name and keys: ``CURRENT_STARTUP``,
``PREVIOUS_STARTUP``, ``LAST_SHUTDOWN``, ``LAST_RUNTIME_HOURS``), plus ``RESTARTS`` per child and
the last ``EVENTS``. Written atomically (temp file + rename) on every event.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILE_NAME = "gw_state_history.json"
MAX_EVENTS = 200


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class StateHistory:
    def __init__(self, data_folder: Path):
        self.path = data_folder / FILE_NAME
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.data: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring unreadable %s: %s", self.path, exc)
        return {}

    def _save(self) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.data, indent=4, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("Cannot write %s: %s", self.path, exc)

    def record(self, event: str, name: str | None = None, detail: str | None = None) -> None:
        entry: dict[str, Any] = {"time": _now(), "event": event}
        if name is not None:
            entry["name"] = name
        if detail:
            entry["detail"] = detail
        with self._lock:
            events = self.data.setdefault("EVENTS", [])
            events.append(entry)
            del events[:-MAX_EVENTS]
            if event == "STARTUP":
                self.data["PREVIOUS_STARTUP"] = self.data.get("CURRENT_STARTUP")
                self.data["CURRENT_STARTUP"] = entry["time"]
            elif event == "SHUTDOWN":
                self.data["LAST_SHUTDOWN"] = entry["time"]
                runtime = datetime.timedelta(seconds=int(time.monotonic() - self._started))
                self.data["LAST_RUNTIME_HOURS"] = str(runtime)
            elif event == "RESTART" and name is not None:
                restarts = self.data.setdefault("RESTARTS", {})
                restarts[name] = restarts.get(name, 0) + 1
            self._save()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.data))
