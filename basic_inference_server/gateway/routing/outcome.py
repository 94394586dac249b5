"""What the forwarding of one request ends with, handed to its callback: exactly one of
:class:`Reply` (the model server answered), :class:`Misroute` (it answered that the body names
another endpoint) or :class:`Failure` (no answer: the connection failed or broke, the deadline
passed, or a remote server refused the request without running it). The channel to a child
(:mod:`.channel`) and the HTTP client of a remote server (:mod:`..remote.client`) both speak it,
and keep each request forwarded as a :class:`Forwarded`: its callbacks and its deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...transport.deadline import Deadline


@dataclass(slots=True)  # made per request: a frozen dataclass costs 4x to build
class Reply:
    """The model server's answer: its status, ``meta`` (a Retry-After value, or a V2 answer's JSON
    header length), its body, and its frame flags (STREAM: it ends a streamed answer)."""

    status: int
    meta: str | None
    body: bytes
    flags: int = 0


@dataclass(slots=True)  # made per request: a frozen dataclass costs 4x to build
class Misroute:
    """421: the body names another endpoint than the one it was routed to; the body of the answer
    holds the body's own SIGNATURE."""

    body: bytes


@dataclass(slots=True)  # made per request: a frozen dataclass costs 4x to build
class Failure:
    """No answer: ConnectFailed (nothing was sent), ConnectionLost, ReadTimedOut (past the deadline),
    or a remote server's refusal without running it (NotRun, SecretRefused)."""

    error: OSError


Outcome = Reply | Misroute | Failure
Callback = Callable[[Outcome], None]
OnItem = Callable[[bytes], None]


class Forwarded:
    """A request forwarded and not answered yet: where its answer and its items go, and when they
    are due."""

    __slots__ = ("callback", "deadline", "on_item")

    def __init__(self, callback: Callback, on_item: OnItem | None, deadline: Deadline):
        self.callback = callback
        self.on_item = on_item
        self.deadline = deadline

    def fail(self, error: OSError) -> None:
        self.callback(Failure(error))
