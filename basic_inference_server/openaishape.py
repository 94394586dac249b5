"""What the gateway and the model servers share of OpenAI's HTTP API: its error object, and what an
endpoint's ``OPENAI`` setting may be.

Every error under ``/v1`` is answered with its real HTTP status in OpenAI's shape, so that the
official SDKs raise their own exception classes (``NotFoundError``, ``RateLimitError``...)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
"""

from __future__ import annotations

import re

from . import jsonutil
from .errors import BadRequest, NotFound, ServingError, UnknownSignature

KINDS = ("chat", "completions", "embeddings")  # an endpoint's "OPENAI"
ROUTE_OF = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}

_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


class InvalidParam(BadRequest):
    """A request parameter OpenAI's API does not allow as sent (400, naming ``param``)."""

    type_name = "InvalidParam"

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "invalid_request_error" if status < 500 else "server_error"


def error_object(exc: ServingError) -> dict[str, object]:
    status = exc.status
    if isinstance(exc, UnknownSignature):
        code = "model_not_found"
    else:
        code = _CODES.get(status) or _SNAKE.sub("_", exc.type_name).lower()
    return {"error": {"message": exc.message, "type": error_type(status), "param": getattr(exc, "param", None),
                      "code": code}}


def error_body(exc: ServingError) -> bytes:
    """``exc`` as OpenAI's error object (JSON)."""
    return jsonutil.dumps_bytes(error_object(exc))


def wrong_route(kind: str | None, model: str, route: str) -> NotFound:
    """The 404 of an endpoint asked on a route of OpenAI's API it does not serve."""
    if kind is None:
        return NotFound(f"model {model!r} does not serve OpenAI's API (its entry has no \"OPENAI\")")
    return NotFound(f"model {model!r} is served on {ROUTE_OF[kind]} (\"OPENAI\": \"{kind}\"), not on {route}")
