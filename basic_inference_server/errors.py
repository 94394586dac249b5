"""Errors that reach a client, each carrying its HTTP status.

Every error answer, from the gateway or from a model server, has one JSON shape::

    {"ERROR": "<message>", "error": {"type": "<ErrorType>", "message": "<message>", "request_id": "<id>"}}

``ERROR`` is what clients of the original system look for; ``error.type`` is stable and
machine-readable; ``error.request_id`` is the ``X-Request-ID`` of the request (see
:mod:`~basic_inference_server.requestid`). Tracebacks never go to the client, only to the log.
"""

from __future__ import annotations

from typing import Any

from . import requestid


class ServingError(Exception):
    """Base class: an error that is answered to the client with ``status``."""

    status = 500
    type_name = "ServingError"
    retry_after: int | None = None

    def __init__(self, message: str, *, status: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def error_type(self) -> str:
        return self.type_name

    def to_body(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


class InputError(ServingError):
    """Raise from any worker hook to answer the client with a 4xx and your own message.

    Example::

        from basic_inference_server import InputError

        def _pre_process(self, inputs):
            if len(inputs.get("TEXT", "")) > 10_000:
                raise InputError("TEXT longer than 10000 characters", status=422)

    ``status`` must be a 4xx code (default 400). Any other exception raised in
    ``_pre_process`` is also answered with 400; in ``_predict`` or ``_post_process`` with 500.
    """

    status = 400
    type_name = "InputError"

    def __init__(self, message: str, status: int = 400):
        if not isinstance(status, int) or not 400 <= status <= 499:
            raise ValueError(f"InputError status must be a 4xx code, got {status!r}")
        super().__init__(message, status=status)


class BadRequest(ServingError):
    status = 400
    type_name = "BadRequest"


class InvalidInput(ServingError):
    """``_pre_process`` rejected the inputs."""

    status = 400
    type_name = "InvalidInput"


class Unauthorized(ServingError):
    status = 401
    type_name = "Unauthorized"


class Forbidden(ServingError):
    """Allowed to nobody here, or not to this caller: an API key's endpoints, a route off or
    loopback-only."""

    status = 403
    type_name = "Forbidden"


class TooManyRequests(ServingError):
    """An API key past its RPS or its CONCURRENCY (with Retry-After)."""

    status = 429
    type_name = "TooManyRequests"


class NotFound(ServingError):
    status = 404
    type_name = "NotFound"


class UnknownSignature(ServingError):
    status = 404
    type_name = "UnknownSignature"


class SignatureDisabled(ServingError):
    status = 404
    type_name = "SignatureDisabled"


class MethodNotAllowed(ServingError):
    status = 405
    type_name = "MethodNotAllowed"

    def __init__(self, message: str, allow: str = ""):
        super().__init__(message)
        self.allow = allow  # the methods the path takes: the Allow header

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class SlowClient(ServingError):
    """The client did not send its request head or body within the front's read timeout."""

    status = 408
    type_name = "RequestTimeout"


class Conflict(ServingError):
    status = 409
    type_name = "Conflict"


class PayloadTooLarge(ServingError):
    status = 413
    type_name = "PayloadTooLarge"


class UnsupportedMediaType(ServingError):
    """A body sent as a media type the route does not take (a batch not sent as NDJSON)."""

    status = 415
    type_name = "UnsupportedMediaType"


class StoreFull(ServingError):
    """The job store has reached JOB_STORE_MAX_MB: no job is accepted until results expire."""

    status = 507
    type_name = "StoreFull"


class HeadersTooLarge(ServingError):
    status = 431
    type_name = "HeadersTooLarge"


class ModelError(ServingError):
    """``_predict`` or ``_post_process`` raised, or the result could not be serialised."""

    status = 500
    type_name = "ModelError"


class ServerDied(ServingError):
    """The model server closed the connection or could not be reached."""

    status = 502
    type_name = "ServerDied"


class Unavailable(ServingError):
    """The endpoint is starting, stopped, failed or shutting down."""

    status = 503
    type_name = "ServerUnavailable"
    retry_after = 1


SHUTTING_DOWN = "model server is shutting down"


class ShuttingDown(Unavailable):
    """The model server is draining: it takes no new request (a gateway that reads
    :data:`SHUTTING_DOWN` in the answer sends the request to another model server)."""

    def __init__(self) -> None:
        super().__init__(SHUTTING_DOWN)


class Misrouted(ServingError):
    """The body names another endpoint than the one the gateway routed it to: the answer carries
    the body's ``SIGNATURE``, and the gateway routes the request again by it."""

    status = 421
    type_name = "Misrouted"

    def __init__(self, message: str, signature: str):
        super().__init__(message)
        self.signature = signature

    def to_body(self) -> dict[str, Any]:
        return {**super().to_body(), "SIGNATURE": self.signature}


class Overloaded(ServingError):
    """The request queue of the endpoint is full."""

    status = 503
    type_name = "Overloaded"
    retry_after = 1


def body_too_large(limit: int, size: int | None = None, setting: bool = True) -> PayloadTooLarge:
    """A body past its limit (``size``: its declared or received length, when known); ``setting``:
    the limit is MAX_BODY_MB's (not a route's own, fixed one), and the message says so."""
    of = f"of {size} bytes " if size is not None else ""
    where = f" (MAX_BODY_MB={limit / 1048576:g} in config_gateway.txt sets it)" if setting else ""
    return PayloadTooLarge(f"request body {of}larger than the limit of {limit} bytes{where}")


class RequestTimeout(ServingError):
    """The request did not finish within the endpoint's ``REQUEST_TIMEOUT``."""

    status = 504
    type_name = "Timeout"


_HTTP_TYPES = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    408: SlowClient,
    413: PayloadTooLarge,
    431: HeadersTooLarge,
    503: Overloaded,
}


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer, with the id of the request being served."""
    error = {"type": error_type, "message": message}
    request_id = requestid.current()
    if request_id != requestid.NONE:
        error["request_id"] = request_id
    return {"ERROR": message, "error": error}


def from_http_status(status: int, message: str) -> ServingError:
    """Map a framework HTTP error (404 route, 405 method, ...) to our error type."""
    cls = _HTTP_TYPES.get(status)
    if cls is None:
        return ServingError(message, status=status)
    return cls(message)
