"""Request ids: one id follows a request through the gateway, its model server and the logs.

A client may send ``X-Request-ID`` (up to 128 characters among letters, digits and ``._:-``);
otherwise, or when what it sent is not such an id, the gateway makes one. The gateway passes it
to the model server in the same header, both answer it in that header, error bodies carry it as
``error.request_id``, and every log line written while the request is served shows it.

The id lives in a context variable: the HTTP fronts' event loops and route threads, and each
worker thread, set it while they work on a request, so log records pick it up without it being
passed around.
"""

from __future__ import annotations

import contextvars
import logging
import random
import re

HEADER = "X-Request-ID"
ENVIRON_KEY = "HTTP_X_REQUEST_ID"
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
NONE = "-"

_random = random.Random()  # seeded from os.urandom
_current: contextvars.ContextVar[str] = contextvars.ContextVar("bis_request_id", default=NONE)


def new() -> str:
    """96 random bits as hex: unique enough to follow a request, not a secret (the generator is
    seeded from the system's randomness once per process, and costs no system call per id)."""
    return f"{_random.getrandbits(96):024x}"


def accept(given: str | None) -> str:
    """The client's id when it is a valid one, else a new id (never echo header injection)."""
    if given and _VALID.fullmatch(given):
        return given
    return new()


def current() -> str:
    """The id of the request this thread is serving, or ``"-"``."""
    return _current.get()


def bind(request_id: str) -> contextvars.Token[str]:
    return _current.set(request_id)


def unbind(token: contextvars.Token[str]) -> None:
    _current.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get()
        return True
