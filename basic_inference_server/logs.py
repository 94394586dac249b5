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
    path, refused = None, None
    if logs_folder is not None:
        path = Path(logs_folder) / f"{safe_file_name(file_stem or role)}.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(_LogFile(path))
        except OSError as exc:  # a folder that cannot be written: the console goes on alone
            refused, path = f"cannot write the log file {path}: {exc.strerror or exc}; logging to stderr only", None
    for handler in handlers:
        handler._bis_handler = True  # type: ignore[attr-defined]
        handler.addFilter(role_filter)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    if refused:
        logging.getLogger(__name__).error("%s", refused)
    return path


class _LogFile(logging.handlers.RotatingFileHandler):
    """The rotated log file. Opened at once, so that a folder that cannot be written is found when
    logging is set up; one that fails later (full disk, folder gone or made read-only) is reported
    once, on stderr, and then left alone, instead of a traceback on stderr for every line."""

    def __init__(self, path: Path):
        super().__init__(path, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def flush(self) -> None:
        if not self.failed:
            super().flush()

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError):  # the stream that failed
            pass

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        sys.stderr.write(f"basic_inference_server: writing the log file {self.baseFilename} failed ({error}); "
                         "logging to stderr only from now on\n")


def logging_configured() -> bool:
    return any(getattr(h, "_bis_handler", False) for h in logging.getLogger().handlers)
