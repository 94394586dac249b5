"""What a piece of work leaves for Python's cyclic collector (tests that requests make none)."""

from __future__ import annotations

import gc
from collections.abc import Callable


def cyclic_garbage(work: Callable[[], None]) -> set[str]:
    """The type names of the objects only the cyclic collector would free after ``work()``."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        work()
        gc.collect()
        return {type(obj).__name__ for obj in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
