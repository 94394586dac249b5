"""What can go wrong when calling a gateway, as one small tree of exceptions.

Every exception is a :class:`ClientError`; its subclass says what the caller can do about it:

==================  ==============================  =========================================
class               when                            what to do
==================  ==============================  =========================================
BadInput            400, 413, 422 (and any 4xx a    fix the request
                    hook raised as ``InputError``)
Unauthorized        401, 403                        pass the admin token, or an API key that may call it
UnknownSignature    404 for a ``SIGNATURE``         check the name (``Client.list_servers``)
Unavailable         503 (starting, restarting,      retry later (``retry_after`` seconds)
                    failed, overloaded, stopping)
Timeout             504, or no answer within the    the request may still be running
                    client's read timeout
ServerError         500, 502, other 5xx, or the     look at the gateway's log
                    connection dropped mid-request
ConnectionFailed    could not connect               is the gateway running at that URL?
==================  ==============================  =========================================

The gateway answers every error as
``{"ERROR": "<message>", "error": {"type": "<ErrorType>", "message": "<message>"}}``;
``error_type`` and ``message`` come from that body when there is one. A stream
(:meth:`Client.stream`) that fails after its first item ends with such a body as its last line;
its exception is chosen by ``error.type`` and has ``status`` ``None`` (the answer began as 200).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from urllib3.exceptions import ProtocolError

__all__ = [
    "BadInput",
    "ClientError",
    "ConnectionFailed",
    "ServerError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnknownSignature",
    "error_from_response",
    "error_from_stream",
]

REQUEST_ID_HEADER = "X-Request-ID"


class ClientError(Exception):
    """Base class of every error raised by :class:`~basic_inference_server.client.Client`.

    Attributes:
        message: What went wrong, from the gateway's error body when it sent one.
        status: The HTTP status, or ``None`` when no answer was received or the error ended a
            stream that had begun.
        error_type: The gateway's ``error.type`` (e.g. ``"InvalidInput"``), or ``None``.
        request_id: The answer's ``X-Request-ID`` header, when the gateway sent one.
        body: The decoded JSON body of the answer (its text if it was not JSON), or ``None``.
    """

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 request_id: str | None = None, body: Any = None):
        self.message = " ".join(str(message).split())  # one line, whatever the server sent
        self.status = status
        self.error_type = error_type
        self.request_id = request_id
        self.body = body
        super().__init__(self.message)

    def __str__(self) -> str:
        where = []
        if self.status is not None:
            where.append(f"HTTP {self.status}")
        if self.error_type:
            where.append(self.error_type)
        if self.request_id:
            where.append(f"request {self.request_id}")
        return f"{' '.join(where)}: {self.message}" if where else self.message


class BadInput(ClientError):
    """The gateway or the model rejected the request (400, 413, 422, or a hook's 4xx)."""


class Unauthorized(ClientError):
    """The admin token or the API key is missing or wrong, or the key may not call this endpoint (401, 403)."""


class UnknownSignature(ClientError):
    """No started endpoint has this ``SIGNATURE`` (404), or it is disabled in the configuration."""


class Unavailable(ClientError):
    """The endpoint or the gateway cannot take the request now (503).

    Attributes:
        retry_after: Seconds the gateway asked to wait (its ``Retry-After`` header), or ``None``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Timeout(ClientError):
    """No answer in time: the gateway's 504, or the client's own read timeout (``status`` is
    ``None`` then). The request may have run, or may still be running, on the server."""


class ServerError(ClientError):
    """The model or the gateway failed (500, 502, other 5xx), or the connection was lost after
    the request was sent (``status`` is ``None`` then)."""


class ConnectionFailed(ClientError):
    """No connection could be made: nothing listens at the URL, the name does not resolve, or
    connecting timed out. The request was never sent."""


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """The ``Retry-After`` header in seconds, or ``None`` if absent or not a number of seconds."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the gateway never sends one
    return seconds if seconds >= 0 else None


def reason_of(exc: BaseException) -> str:
    """The OS-level reason of a urllib3 error ("Connection refused"), else its text."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        if isinstance(cause, ProtocolError) and len(cause.args) > 1 and isinstance(cause.args[1], BaseException):
            cause = cause.args[1]
            if str(cause):
                return str(cause)
            continue
        cause = cause.__cause__ or cause.__context__
    return str(exc)


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", errors="replace")


def _message_and_type(body: Any, status: int) -> tuple[str, str | None]:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"]), error.get("type")
        if body.get("ERROR"):
            return str(body["ERROR"]), None
    if isinstance(body, str) and body.strip():
        return body.strip()[:300], None
    return f"HTTP {status} without an error message", None


def error_from_response(status: int, headers: Mapping[str, str], data: bytes) -> ClientError:
    """The exception for an error answer of the gateway.

    Args:
        status: The HTTP status (not 2xx).
        headers: The answer's headers (``Retry-After`` and ``X-Request-ID`` are read).
        data: The raw body.

    Returns:
        The :class:`ClientError` subclass that matches the status and the body's ``error.type``.
    """
    body = _decode(data)
    message, error_type = _message_and_type(body, status)
    return _error_for(status, message, status=status, error_type=error_type,
                      request_id=headers.get(REQUEST_ID_HEADER), body=body,
                      retry_after=retry_after_of(headers))


# The status the gateway answers each error type with; a stream that has begun (200) can no
# longer say it, so an error line is classified by its type alone.
_TYPE_STATUS = {
    "BadRequest": 400, "InvalidInput": 400, "InputError": 400, "PayloadTooLarge": 413,
    "Unauthorized": 401, "UnknownSignature": 404, "SignatureDisabled": 404,
    "ServerUnavailable": 503, "Overloaded": 503, "Timeout": 504,
}


def error_from_stream(body: Any, request_id: str | None = None) -> ClientError:
    """The exception for the error line that ended a stream after its first item.

    Args:
        body: The decoded error line, ``{"ERROR": ..., "error": {"type": ..., "request_id": ...}}``.
        request_id: The answer's ``X-Request-ID``, used when the line does not name one.

    Returns:
        The :class:`ClientError` subclass for the line's ``error.type`` (a type the client does not
        know is a :class:`ServerError`), with ``status`` ``None``: the answer had begun with 200.
    """
    message, error_type = _message_and_type(body, 500)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("request_id"):
        request_id = str(error["request_id"])
    return _error_for(_TYPE_STATUS.get(error_type or "", 500), message, status=None, error_type=error_type,
                      request_id=request_id, body=body)


def _error_for(code: int, message: str, *, retry_after: float | None = None, **details: Any) -> ClientError:
    """The subclass for the HTTP status ``code`` (and ``details["error_type"]``), built with ``details``."""
    error_type = details["error_type"]
    if code in (400, 413, 422) or (400 <= code < 500 and error_type == "InputError"):
        return BadInput(message, **details)
    if code in (401, 403):
        return Unauthorized(message, **details)
    if code == 404 and error_type != "NotFound":  # "NotFound" is a wrong route, not a signature
        return UnknownSignature(message, **details)
    if code == 503:
        return Unavailable(message, retry_after=retry_after, **details)
    if code == 504:
        return Timeout(message, **details)
    if code >= 500:
        return ServerError(message, **details)
    return ClientError(message, **details)
