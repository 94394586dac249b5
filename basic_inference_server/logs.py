"""Logging set-up for entry points: one rotated file per process plus the console.

Library modules only do ``logger = logging.getLogger(__name__)``; handlers are installed here,
by the entry point of each process (gateway, model server, support script's Logger).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path

from .requestid import RequestIdFilter

LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(process)d %(role)s] [%(request_id)s] %(name)s: %(message)s"
MAX_LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
_SAFE_RE = re.compile(r"[^A-Za-z0-9_.\-]+")


class _RoleFilter(RequestIdFilter):
    """Adds the process role and the id of the request being served (``-`` outside one)."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        return super().filter(record)


def safe_file_name(name: str) -> str:
    return _SAFE_RE.sub("_", name)[:120] or "process"


def setup_process_logging(
    role: str, logs_folder: str | Path | None, file_stem: str | None = None, level: int | str | None = None
) -> Path | None:
    """Install the console and rotated-file handlers on the root logger of this process.

    Returns the log file path (None when ``logs_folder`` is None). Calling it again replaces the
    handlers it installed before, so an entry point may call it once its folders are known.
    """
    if level is None:
        level = os.environ.get("BIS_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_bis_handler", False):
            root.removeHandler(handler)
            handler.close()
    role_filter = _RoleFilter(role)
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    path = None
    if logs_folder is not None:
        folder = Path(logs_folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{safe_file_name(file_stem or role)}.log"
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8", delay=True
            )
        )
    for handler in handlers:
        handler._bis_handler = True  # type: ignore[attr-defined]
        handler.addFilter(role_filter)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    return path


def logging_configured() -> bool:
    return any(getattr(h, "_bis_handler", False) for h in logging.getLogger().handlers)
