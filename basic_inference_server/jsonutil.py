"""JSON encoding shared by every process (request bodies are parsed by :mod:`.jsonbody`).

Numpy values in results must serialise without importing numpy here (a dummy model server
should not pay numpy's memory), so they are recognised by duck typing: arrays have
``tolist()``, scalars have ``item()``.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec


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


def dumps(value: Any) -> str:
    """Compact JSON text; numpy arrays and scalars become lists and numbers."""
    return _ENCODER.encode(value)


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes, the same as :func:`dumps`.

    A value made only of what both encoders write the same way (dicts with string keys, lists,
    tuples, strings, booleans, None, integers, finite floats) is encoded by msgspec, about ten
    times faster than the standard library on a model's answer; anything else (numpy values,
    bytes, sets, NaN, other objects) by the standard library with its rules above."""
    if _plain(value, 0):
        try:
            return _fast_encode(value)
        except (OverflowError, TypeError, ValueError):  # an integer past 64 bits, a very deep nesting
            pass
    return _ENCODER.encode(value).encode("utf-8")


_fast_encode = msgspec.json.Encoder().encode
_MAX_DEPTH = 64
_NUMBERS = (int, float, bool)


def _plain(value: Any, depth: int) -> bool:
    """Whether msgspec writes ``value`` exactly as the standard encoder would (types checked
    exactly: subclasses such as numpy's float64 or bool-like enums take the standard path)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return value - value == 0.0  # False for NaN and the infinities, which JSON has not
    if depth >= _MAX_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        if value and type(value[0]) in _NUMBERS:
            try:  # a vector of numbers, checked at C speed: a sum that is a plain, finite number
                total = sum(value)
            except Exception:  # noqa: BLE001 - not plain numbers (or too large a sum): look at each
                total = None
            kind = type(total)
            if kind is int:
                return True
            if kind is float:
                return total - total == 0.0  # NaN and the infinities make it NaN (so may an overflow)
        for item in value:
            if not _plain(item, depth + 1):
                return False
        return True
    return False
