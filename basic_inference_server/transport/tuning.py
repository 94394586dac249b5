"""Process settings for serving many connections and large bodies.

- Every connection is an open file: the soft limit is raised to the hard one.
- Request bodies of a megabyte come and go by the thousand. glibc's malloc serves a large block
  from the heap once it has seen one freed (its mmap threshold grows), and a heap fragmented by
  such blocks keeps the process's memory at its peak long after. A fixed threshold keeps every
  block of 128 KB or more in its own mapping, returned to the system when it is freed. Only the
  gateway, which relays bodies and computes nothing, sets it: in a model server every numpy array
  of that size would be mapped and faulted in afresh (2.6 ms of kernel time per request on the
  numpy bench model).
- Large request bodies come and go in model servers too, where the threshold stays adaptive: once
  one is freed, the next of that size comes from the heap, and freed heap memory stays with the
  process. So when large bodies have been given back, the process hands the free memory to the
  system (glibc's malloc_trim), at most once a second: a burst of 8 MB bodies leaves nothing behind.
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

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


def return_large_blocks() -> bool:
    """Ask glibc to map blocks of MMAP_THRESHOLD bytes or more on their own (False elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        logger.debug("mallopt is not available: large blocks stay with the allocator's defaults")
        return False


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
TRIM_INTERVAL = 1.0  # seconds between two trims at the least
TRIM_DELAY = 0.2  # seconds from the body that calls for a trim to the trim (its last references go meanwhile)


class Trimmer:
    """Gives the memory of large freed bodies back to the system (glibc's ``malloc_trim``), once
    TRIM_AFTER bytes of them have been freed, at most every TRIM_INTERVAL seconds (a trim that
    comes too soon after the last waits on a timer, so the last bodies of a burst are given back
    too). A no-op where the C library has no malloc_trim."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._freed = 0
        self._last = 0.0
        self._timer: threading.Timer | None = None
        try:
            self._trim_call = ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
        except (OSError, AttributeError):
            self._trim_call = None

    def freed(self, size: int) -> None:
        """``size`` bytes of a body were just given back (any thread)."""
        if self._trim_call is None:
            return
        with self._lock:
            self._freed += size
            if self._freed < TRIM_AFTER or self._timer is not None:
                return
            delay = max(TRIM_DELAY, self._last + TRIM_INTERVAL - time.monotonic())
            self._timer = threading.Timer(delay, self._trim)
            self._timer.daemon = True
            self._timer.start()

    def _trim(self) -> None:
        with self._lock:
            self._freed, self._timer, self._last = 0, None, time.monotonic()
        self._trim_call(0)  # ctypes lets the interpreter's lock go meanwhile


trimmer = Trimmer()
