"""``Logger``: the original system's logger API, as a thin layer over stdlib ``logging``.

Endpoint and support-process code written for the original (``Logger(lib_name=..., base_folder=...,
app_folder=..., TF_KERAS=False, max_lines=...)``, ``log.P(...)``, ``log.config_data``,
``log.update_config_data(...)``, the folder helpers) runs unchanged. Lines go to the process's
rotated log file; nothing rewrites a whole file per line.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import time
from typing import Any

from .config import apply_overrides, read_config_file
from .logs import logging_configured, setup_process_logging

_SUBFOLDERS = ("_logs", "_data", "_models", "_output")
_WARN_COLORS = ("r",)


class Logger:
    """Original-compatible logger.

    Args:
        lib_name: short name shown in log lines (and the log file name of a standalone script).
        base_folder: folder holding the app folder (default ``.``).
        app_folder: cache folder inside ``base_folder`` (default ``_cache``), with ``_logs``,
            ``_data``, ``_models`` and ``_output`` below it.
        config_file: optional JSON file loaded into :attr:`config_data`; files named
            ``*conf*.json|txt`` in ``_data`` then replace its top-level keys.
        TF_KERAS, max_lines, and other keywords of the original are accepted and ignored.
    """

    def __init__(
        self,
        lib_name: str = "LOG",
        base_folder: str | None = None,
        app_folder: str | None = None,
        config_file: str | None = None,
        TF_KERAS: bool = False,  # noqa: N803 - original keyword
        max_lines: int | None = None,
        DEBUG: bool = False,  # noqa: N803 - original keyword
        **kwargs: Any,
    ):
        self.lib_name = lib_name
        self.base_folder = str(base_folder if base_folder is not None else ".")
        self.app_folder = str(app_folder if app_folder is not None else "_cache")
        self.root_folder = os.path.abspath(os.path.join(self.base_folder, self.app_folder))
        self.DEBUG = DEBUG
        self.hostname = socket.gethostname()
        self.config_file = config_file
        self._logger = logging.getLogger(f"bis.{lib_name}")
        self._timers: dict[str, float] = {}
        for sub in _SUBFOLDERS:
            try:
                os.makedirs(os.path.join(self.root_folder, sub), exist_ok=True)
            except OSError as exc:  # read-only: logging and files of that folder fail on their own, said once
                self._logger.warning("Logger: cannot create %s: %s", os.path.join(self.root_folder, sub), exc.strerror)
        if not logging_configured():
            # A standalone script (e.g. a support process) made this Logger: it is the entry point.
            setup_process_logging(lib_name, self.get_logs_folder(), file_stem=lib_name)
        self.config_data: dict[str, Any] = {}
        if config_file is not None:
            self.config_data = read_config_file(config_file)
        self.config_data = apply_overrides(self.config_data, self.get_data_folder())

    # -- logging -----------------------------------------------------------------------------
    def P(self, s: Any, color: str | None = None, **kwargs: Any) -> None:  # noqa: N802 - original API
        """Log a line; ``color='r'`` or text containing ERROR/WARNING raises the level."""
        text = str(s)
        level = logging.INFO
        if "ERROR" in text:
            level = logging.ERROR
        elif "WARNING" in text or (color or "")[:1] in _WARN_COLORS:
            level = logging.WARNING
        self._logger.log(level, text)

    p = P
    verbose_log = P

    def D(self, s: Any, **kwargs: Any) -> None:  # noqa: N802 - original API
        if self.DEBUG:
            self._logger.debug(str(s))

    # -- configuration -----------------------------------------------------------------------
    def update_config_data(self, new_data: dict[str, Any]) -> None:
        """Merge ``new_data`` into :attr:`config_data`."""
        self.config_data.update(new_data)

    update_config = update_config_data

    # -- folders and files -------------------------------------------------------------------
    def get_logs_folder(self) -> str:
        return os.path.join(self.root_folder, "_logs")

    def get_data_folder(self) -> str:
        return os.path.join(self.root_folder, "_data")

    def get_models_folder(self) -> str:
        return os.path.join(self.root_folder, "_models")

    def get_output_folder(self) -> str:
        return os.path.join(self.root_folder, "_output")

    def _existing(self, folder: str, fname: str) -> str | None:
        path = os.path.join(folder, fname)
        return path if os.path.exists(path) else None

    def get_data_file(self, fname: str) -> str | None:
        return self._existing(self.get_data_folder(), fname)

    def get_models_file(self, fname: str) -> str | None:
        return self._existing(self.get_models_folder(), fname)

    def get_output_file(self, fname: str) -> str | None:
        return self._existing(self.get_output_folder(), fname)

    def load_json(self, fname: str) -> Any:
        with open(fname, encoding="utf-8") as fh:
            return json.load(fh)

    def save_json(self, data: Any, fname: str) -> str:
        tmp = f"{fname}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=4, sort_keys=True, default=str)
        os.replace(tmp, fname)
        return fname

    def load_data_json(self, fname: str) -> Any:
        path = self.get_data_file(fname)
        return None if path is None else self.load_json(path)

    def save_data_json(self, data: Any, fname: str) -> str:
        return self.save_json(data, os.path.join(self.get_data_folder(), fname))

    def save_output_json(self, data: Any, fname: str) -> str:
        return self.save_json(data, os.path.join(self.get_output_folder(), fname))

    def load_pickle_from_data(self, fname: str) -> Any:
        return self._load_pickle(self.get_data_folder(), fname)

    def load_pickle_from_models(self, fname: str) -> Any:
        return self._load_pickle(self.get_models_folder(), fname)

    def save_pickle_to_data(self, data: Any, fname: str) -> str:
        return self._save_pickle(self.get_data_folder(), data, fname)

    def save_pickle_to_models(self, data: Any, fname: str) -> str:
        return self._save_pickle(self.get_models_folder(), data, fname)

    @staticmethod
    def _load_pickle(folder: str, fname: str) -> Any:
        path = os.path.join(folder, fname)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as fh:
            return pickle.load(fh)

    @staticmethod
    def _save_pickle(folder: str, data: Any, fname: str) -> str:
        path = os.path.join(folder, fname)
        with open(path, "wb") as fh:
            pickle.dump(data, fh)
        return path

    # -- time --------------------------------------------------------------------------------
    @staticmethod
    def now_str(nice_print: bool = False, short: bool = False) -> str:
        if short:
            return time.strftime("%Y%m%d%H%M%S")
        return time.strftime("%Y-%m-%d %H:%M:%S" if nice_print else "%Y%m%d_%H%M%S")

    @staticmethod
    def time_to_str(t: float | None = None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        return time.strftime(fmt, time.localtime(time.time() if t is None else t))

    def start_timer(self, name: str) -> None:
        self._timers[name] = time.perf_counter()

    def end_timer(self, name: str) -> float:
        start = self._timers.pop(name, None)
        return 0.0 if start is None else time.perf_counter() - start

    def __repr__(self) -> str:
        return f"Logger(lib_name={self.lib_name!r}, root_folder={self.root_folder!r})"

