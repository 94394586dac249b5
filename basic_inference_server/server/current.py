"""What a worker thread is serving now, for the attributes of :class:`~.worker.FlaskWorker` that
tell endpoint code about it: ``_counter`` (the call id), ``get_last_query()`` (the inputs) and, in a
streaming batch, ``cancelled_slots`` (the positions whose client has left).

Each worker instance lives on its own thread, so one thread-local record per thread is the state
of one worker. The hooks runner (:mod:`.hooks`) writes it before each hook it runs.
"""

from __future__ import annotations

import threading
from typing import Any


class _Serving(threading.local):
    def __init__(self) -> None:
        self.call_id: int | None = None  # None: no call yet (loading: notifications go to INIT)
        self.inputs: dict[str, Any] | None = None
        self.cancelled_slots: set[int] = set()


SERVING = _Serving()
