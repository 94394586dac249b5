"""Flask helpers shared by the gateway and the model servers: JSON bodies and JSON errors."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from . import jsonutil, requestid
from .errors import (
    BadRequest,
    MethodNotAllowed,
    ServingError,
    Unauthorized,
    body_too_large,
    error_body,
    from_http_status,
)
from .jsonbody import DEFAULT_LIMITS, JsonLimits, loads_object
from .openaishape import error_object as openai_error_object

logger = logging.getLogger(__name__)

JSON_MIMETYPE = "application/json"
# The most a body of any route but /run and V2 infer may hold (admin commands, support metrics): they
# are parsed on the route threads, whose parse holds the interpreter's lock the event loop needs too.
ROUTE_BODY_LIMIT = 64 * 1024


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonutil.dumps_bytes(payload), status=status, headers=headers, mimetype=JSON_MIMETYPE)


def raw_json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status=status, headers=headers, mimetype=JSON_MIMETYPE)


def read_limited(environ: dict[str, Any], limit: int) -> bytes:
    """The raw request body, refusing more than ``limit`` bytes (declared or chunked) with 413."""
    try:
        declared = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadRequest("invalid Content-Length") from None
    if declared > limit:
        raise body_too_large(limit, declared, setting=limit != ROUTE_BODY_LIMIT)
    stream = environ["wsgi.input"]
    data = stream.read(declared) if declared else stream.read(limit + 1)
    if len(data) > limit:
        raise body_too_large(limit, setting=limit != ROUTE_BODY_LIMIT)
    return data


def read_body(request: Request, limit: int) -> bytes:
    return read_limited(request.environ, limit)


def read_json_object(request: Request, limit: int, limits: JsonLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    return loads_object(read_body(request, limit), limits)


def install_error_handlers(app: Flask, plain_under: str = "", openai_under: str = "") -> None:
    """Every error leaves as ``{"ERROR": ..., "error": {"type": ..., "message": ...}}``; under the
    path prefix ``plain_under`` (the Open Inference Protocol's routes) as ``{"error": "<message>"}``,
    under ``openai_under`` as OpenAI's error object."""

    def error_response(exc: ServingError) -> Response:
        if plain_under and request.path.startswith(plain_under):
            return json_response({"error": exc.message}, exc.status, exc.headers())
        if openai_under and request.path.startswith(openai_under):
            return json_response(openai_error_object(exc), exc.status, exc.headers())
        return json_response(exc.to_body(), exc.status, exc.headers())

    @app.errorhandler(ServingError)
    def _serving_error(exc: ServingError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        message = exc.description or exc.name
        if code == 405:
            message = f"method not allowed here; allowed: {', '.join(sorted(exc.valid_methods or []))}"
        elif code == 404:
            message = "no such route; see the README for the list of routes"
        response = error_response(from_http_status(code, message))
        if code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("Unhandled %s", type(exc).__name__)
        message = f"internal error: {type(exc).__name__}"
        if any(prefix and request.path.startswith(prefix) for prefix in (plain_under, openai_under)):
            return error_response(ServingError(message))  # the protocol's error shape
        return json_response(error_body("InternalError", message), 500)


def bearer_of(header: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None: no such header)."""
    if not header or header[:7].lower() not in ("bearer ", b"bearer "):
        return None
    token = header[7:].strip()
    return token.decode("latin-1") if isinstance(token, bytes) else token


def is_admin_token(expected: str | None, given: str | None) -> bool:
    """``given`` is the admin token (compared in constant time)."""
    if not expected or given is None:
        return False
    try:
        return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
    except UnicodeEncodeError:  # an unpaired surrogate ("\ud800"): no token is that
        return False


def presented_token(request: Request, body: dict[str, Any] | None) -> str | None:
    token = bearer_of(request.headers.get("Authorization"))
    if token is not None:
        return token
    if body is not None:
        value = body.get("TOKEN")
        if isinstance(value, str):
            return value
    return None


def require_admin(expected: str, request: Request, body: dict[str, Any] | None, where: str = "") -> None:
    """Raise 401 unless the request carries the admin token (constant-time comparison); ``where``:
    where an operator finds the token, said in the message."""
    given = presented_token(request, body)
    hint = f" (the token is {where})" if where else ""
    if given is None:
        raise Unauthorized(f"admin token required: send 'Authorization: Bearer <token>' or \"TOKEN\" in the body{hint}")
    if not is_admin_token(expected, given):
        raise Unauthorized(f"admin token is wrong{hint}")


Answer = tuple[int, bytes, dict[str, str] | None]  # status, JSON body, extra headers


METHOD_NOT_ALLOWED = MethodNotAllowed("method not allowed here; allowed: POST", allow="POST")


class RequestIds:
    """WSGI middleware: the request's id (the client's ``X-Request-ID`` when valid, else a new
    one) is bound while the app runs (:mod:`~basic_inference_server.requestid`) and answered in
    ``X-Request-ID``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request_id = requestid.accept(environ.get(requestid.ENVIRON_KEY))
        token = requestid.bind(request_id)
        try:
            def start_with_id(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                headers.append((requestid.HEADER, request_id))
                return start_response(status, headers, exc_info)
            return self.app(environ, start_with_id)
        finally:
            requestid.unbind(token)


ROUTED_HEADER = "X-Routed-Signature"  # the endpoint a gateway routed a body to without parsing it
PIPE_HEADER = "X-Pipeline-Step"  # a pipeline step over HTTP: its REQUEST flags PIPE_IN, PIPE_OUT as a number
PIPE_CONTENT_TYPE = "application/x-bis-pipeline"  # a value passed between pipeline steps (pipedata)
JOB_HEADER = "X-Durable-Job"  # "1": the body is a durable job's, whose own fields are not inputs
ENDPOINT_TOKEN_ENV = "BIS_ENDPOINT_TOKEN"  # the shared secret of gateways and the model servers they did not start
ENDPOINT_TOKEN_FILE_ENV = "BIS_ENDPOINT_TOKEN_FILE"  # or the file that holds it (a Docker or Kubernetes secret)
ENDPOINT_TOKEN_HEADER = "X-Endpoint-Token"  # the secret a gateway sends to a model server it did not start


def secret_from_env(name: str, file_name: str) -> tuple[str | None, str]:
    """A secret: the environment variable ``name``, else the content of the file ``file_name``
    names (a Docker or Kubernetes secret; stripped). Returns it and where it came from; None when
    neither is set. ValueError naming the file when it cannot be read (never the secret)."""
    value = os.environ.get(name)
    if value:
        return value, name
    path = os.environ.get(file_name)
    if not path:
        return None, name
    where = f"{file_name} ({path})"
    try:
        return Path(path).read_text(encoding="utf-8").strip(), where
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file_name}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def endpoint_token() -> str | None:
    """The shared secret: ``BIS_ENDPOINT_TOKEN``, else the content of the file
    ``BIS_ENDPOINT_TOKEN_FILE`` names (stripped), else None. ValueError when that file cannot be
    read or is empty (the message names the file, never the secret)."""
    value, where = secret_from_env(ENDPOINT_TOKEN_ENV, ENDPOINT_TOKEN_FILE_ENV)
    if value is None:
        return None
    if not value:
        raise ValueError(f"{where} is empty")
    if not all(33 <= ord(char) <= 126 for char in value):  # it travels in an HTTP header
        raise ValueError(f"{where}: the secret must be printable ASCII without spaces")
    return value
