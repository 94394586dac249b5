"""Flask helpers shared by the gateway and the model servers: JSON bodies and JSON errors."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Flask, Request, Response
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import jsonutil
from .errors import PayloadTooLarge, ServingError, Unauthorized, error_body, from_http_status

logger = logging.getLogger(__name__)

JSON_MIMETYPE = "application/json"


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonutil.dumps_bytes(payload), status=status, headers=headers, mimetype=JSON_MIMETYPE)


def raw_json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status=status, headers=headers, mimetype=JSON_MIMETYPE)


def error_response(exc: ServingError) -> Response:
    return json_response(exc.to_body(), exc.status, exc.headers())


def read_body(request: Request, limit: int) -> bytes:
    """The raw request body, refusing more than ``limit`` bytes (declared or chunked) with 413."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    if len(data) > limit:
        raise _too_large(limit)
    return data


def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    return jsonutil.loads_object(read_body(request, limit))


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body larger than the limit of {limit} bytes")


def install_error_handlers(app: Flask) -> None:
    """Every error leaves as ``{"ERROR": ..., "error": {"type": ..., "message": ...}}``."""

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
        return json_response(error_body("InternalError", f"internal error: {type(exc).__name__}"), 500)


def presented_token(request: Request, body: dict[str, Any] | None) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    if body is not None:
        value = body.get("TOKEN")
        if isinstance(value, str):
            return value
    return None


def require_admin(expected: str, request: Request, body: dict[str, Any] | None) -> None:
    """Raise 401 unless the request carries the admin token (constant-time comparison)."""
    given = presented_token(request, body)
    if given is None:
        raise Unauthorized("admin token required: send 'Authorization: Bearer <token>' or \"TOKEN\" in the body")
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise Unauthorized("admin token is wrong")
