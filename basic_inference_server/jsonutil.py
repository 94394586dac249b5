"""JSON encoding and decoding shared by every process.

Numpy values in results must serialise without importing numpy here (a dummy model server
should not pay numpy's memory), so they are recognised by duck typing: arrays have
``tolist()``, scalars have ``item()``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

from .errors import BadRequest


def _default(value: Any) -> Any:
    module = type(value).__module__
    if module == "numpy":
        if hasattr(value, "tolist"):
            return value.tolist()
        if hasattr(value, "item"):
            return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# allow_nan=False: NaN and Infinity are not JSON; a result holding them is a model error, not bad JSON.
_ENCODER = json.JSONEncoder(default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def dumps(value: Any) -> str:
    """Compact JSON text; numpy arrays and scalars become lists and numbers."""
    return _ENCODER.encode(value)


def dumps_bytes(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


def loads_object(data: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; raise BadRequest otherwise."""
    if not data:
        raise BadRequest("Request body is empty: send a JSON object such as {\"SIGNATURE\": \"<endpoint>\"}")
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Malformed JSON body: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"JSON body must be an object, got {type(value).__name__}")
    return value


def loads_for_routing(data: bytes) -> dict[str, Any]:
    """Parse a body the gateway only routes (it forwards the bytes, never the parsed values).

    orjson parses several times faster than the standard library, which the gateway would
    otherwise spend about a sixth of its CPU on for a 1,000-number input. Its few differences
    (integers beyond 64 bits become floats, lone surrogates are refused) do not matter for
    reading ``SIGNATURE``, and whatever it refuses is parsed again by :func:`loads_object`, so
    what is accepted and the error messages are exactly the model server's.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return loads_object(data)
    if not isinstance(value, dict):
        return loads_object(data)
    return value


class NumpyJSONProvider(DefaultJSONProvider):
    """Flask JSON provider that serialises numpy values (replaces ``app.json_encoder``)."""

    sort_keys = False
    compact = True

    @staticmethod
    def default(o: Any) -> Any:
        return _default(o)
