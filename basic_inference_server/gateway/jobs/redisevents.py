"""What the other gateways of a Redis job store change, heard on its ``events`` channel.

The store's scripts publish ``[origin, kind, args...]`` in JSON as they write (so a message
always comes after what it tells of): ``queued, <signature or "*">, <count>``, ``item, <job>,
<index>``, ``ended, <job>`` and ``cancelled, <job>, <signature>, <state it was in>``. This thread hands each
message of another gateway to ``handle(kind, args)``, and ``handle("resync", [])`` each time it
(re)subscribes: what was published while it was cut off is lost, so the dispatcher reads the
queue again and wakes its waiters to look at the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

logger = logging.getLogger(__name__)

RETRY = 1.0  # seconds between attempts to subscribe again after Redis went away


class RedisEvents:
    def __init__(self, client: Any, channel: str, origin: str, handle: Callable[[str, list[str]], None]):
        self.client, self.channel, self.origin, self.handle = client, channel, origin, handle
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.handle("resync", [])
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._heard(message["data"])
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                logger.warning("Jobs: the events of the other gateways are not heard (%s); retrying", exc)
                self._stopped.wait(RETRY)
            finally:
                with contextlib.suppress(Exception):  # a connection already gone
                    pubsub.close()

    def _heard(self, data: bytes) -> None:
        try:
            origin, kind, *args = json.loads(data)
        except ValueError:
            logger.warning("Jobs: an event that is not one on the channel: %r", data[:200])
            return
        if origin == self.origin:
            return  # this gateway's own: it knew before it wrote
        try:
            self.handle(kind, args)
        except Exception:
            logger.exception("Jobs: an event of another gateway could not be handled: %r", data[:200])
