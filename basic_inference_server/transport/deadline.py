"""When the answer to a request is due, for whoever waits for one (:class:`Deadline`).

The whole answer, or the first item of a streamed one, is due ``timeout`` seconds after the
request (``REQUEST_TIMEOUT``); once items come, each next one within ``idle`` seconds
(``STREAM_IDLE_TIMEOUT``) and the last within ``total`` seconds of the request
(``STREAM_TIMEOUT``). The gateway's channel to its model servers, its client of remote model
servers and a model server's HTTP port all keep their requests' deadlines with it.
"""

from __future__ import annotations


class Deadline:
    __slots__ = ("due", "ends_at", "idle", "streaming", "timeout", "total")

    def __init__(self, now: float, timeout: float, idle: float = 0.0, total: float = 0.0):
        self.timeout, self.idle, self.total = timeout, idle, total
        self.due = now + timeout  # when the next thing (the answer, or the next item) is due
        self.ends_at = now + total
        self.streaming = False

    def item(self, now: float) -> None:
        """An item came: the next one is due ``idle`` seconds on, and none past the stream's end."""
        self.streaming = True
        self.due = min(now + self.idle, self.ends_at)

    def passed(self, now: float) -> bool:
        return now >= self.due

    def why(self, now: float, first: str = "") -> str:
        """What was late, for the error that says so (``first``: how to say that the answer, or
        the first item, did not come; by default in REQUEST_TIMEOUT's terms)."""
        if not self.streaming:
            return first or f"request did not finish within REQUEST_TIMEOUT={self.timeout:g}s"
        if now >= self.ends_at:
            return f"the stream took longer than STREAM_TIMEOUT={self.total:g}s"
        return f"no item within STREAM_IDLE_TIMEOUT={self.idle:g}s"
