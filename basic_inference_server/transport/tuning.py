"""Process settings for serving many connections and large bodies.

- Every connection is an open file: the soft limit is raised to the hard one.
- Request bodies of megabytes come and go by the thousand. glibc's malloc serves a large block from
  the heap once it has seen one of that size freed (its mmap threshold adapts), which makes the
  next body cheap: 0.07 ms to read 8 MB into a buffer here, against 3.7 ms when every such block is
  a fresh mapping whose pages fault in (a fixed threshold, which the gateway used to set). But freed
  heap memory stays with the process. So when large bodies have been given back, the process hands
  its free memory to the system (glibc's malloc_trim, which also releases the free pages inside the
  heap): 0.5 s after the last large body, and at least every 2 s while they keep coming.
- Once loaded, a process freezes the objects it holds (modules, the app, the model): Python's full
  collections then look only at what was made since, not at the hundreds of thousands of objects
  a model and its libraries leave behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import resource
import threading
import time

logger = logging.getLogger(__name__)

def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def freeze_loaded_objects() -> int:
    """Collect once, then move every object alive now out of the cyclic collector's reach (they
    stay alive for good, unless their reference counts free them; garbage made later is collected
    as before). A full collection of the ONNX bench model's server looks at every object its
    libraries made, about 20 ms here, during which no request moves; with them frozen it looks at
    the few made since. How many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


TRIM_AFTER = 4 * 1024 * 1024  # bytes of large bodies given back that make a trim worth its cost
TRIM_QUIET = 0.5  # seconds after the last large body given back (the end of a burst) a trim comes
TRIM_EVERY = 2.0  # seconds between two trims at the most while large bodies keep coming


class Trimmer:
    """Gives the memory of large freed bodies back to the system (glibc's ``malloc_trim``) once
    TRIM_AFTER bytes of them have been freed: TRIM_QUIET seconds after the last one, or TRIM_EVERY
    seconds after the previous trim while they keep coming. A no-op where the C library has no
    malloc_trim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._freed = 0
        self._quiet_at = self._last = 0.0
        self._timer: threading.Timer | None = None
        try:
            self._trim_call = ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
        except (OSError, AttributeError):
            self._trim_call = None

    def freed(self, size: int) -> None:
        """``size`` bytes of a body were just given back, or will be in a moment (any thread)."""
        if self._trim_call is None or size < _LARGE:
            return
        with self._lock:
            self._freed += size
            self._quiet_at = time.monotonic() + TRIM_QUIET
            if self._freed >= TRIM_AFTER and self._timer is None:
                self._start(TRIM_QUIET)

    def _start(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._due)
        self._timer.daemon = True
        self._timer.start()

    def _due(self) -> None:
        with self._lock:
            now = time.monotonic()
            due = min(self._quiet_at, self._last + TRIM_EVERY)
            if now < due:  # bodies still coming: wait for the burst to end, or the next trim's turn
                self._start(due - now)
                return
            self._freed, self._timer, self._last = 0, None, now
        self._trim_call(0)  # ctypes lets the interpreter's lock go meanwhile


_LARGE = 65536
trimmer = Trimmer()
