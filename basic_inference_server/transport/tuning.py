"""Process settings for serving many connections and large bodies.

- Every connection is an open file: the soft limit is raised to the hard one.
- Request bodies of a megabyte come and go by the thousand. glibc's malloc serves a large block
  from the heap once it has seen one freed (its mmap threshold grows), and a heap fragmented by
  such blocks keeps the process's memory at its peak long after. A fixed threshold keeps every
  block of 128 KB or more in its own mapping, returned to the system when it is freed. Only the
  gateway, which relays bodies and computes nothing, sets it: in a model server every numpy array
  of that size would be mapped and faulted in afresh (2.6 ms of kernel time per request on the
  numpy bench model).
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
