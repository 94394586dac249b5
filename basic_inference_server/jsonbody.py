"""Request bodies as JSON: parsed strictly, within bounds of size and shape known before parsing.

A JSON body costs far more memory and time than its bytes. Measured with msgspec on CPython 3.11
(``python -m bench.attacks --costs``): a number costs 8-40 bytes once parsed, a string 50-70, an
empty array or object about 80, so an 8 MB body of ``[[[[[[[[[[]]]]]]]]]],`` repeated holds 3.8
million arrays, 355 MB (44 bytes per body byte), and took 1.8 s to parse, most of it Python's
cyclic collector walking the new arrays again and again. So every body is measured before it is
parsed, by what each kind of value costs:

- ``MAX_JSON_CONTAINERS`` (arrays and objects, 500,000 by default: at most about 45 MB of them);
- ``MAX_JSON_VALUES`` (everything: numbers, strings, keys, literals, arrays and objects; 4,000,000,
  the most an 8 MB body of one-digit numbers holds);
- ``MAX_JSON_DEPTH`` (how deeply arrays and objects nest, 256).

The measure reads only bytes, at C speed and in bounded memory: characters are counted first (a
bound on every count that strings can only inflate); only when a bound is passed are the strings
taken out and the counts made exact, and the depth is walked only when there are more arrays and
objects than ``MAX_JSON_DEPTH``. A body past a bound is refused with 413 (counts) or 400 (depth)
naming the setting; one within them is parsed with the cyclic collector paused (a parsed body
holds no cycles), about four times faster on bodies of many small arrays.

What the standard library would let through and JSON does not have is refused with 400, naming
the field: numbers out of a double's range (``1e400``, which would become infinity), strings with
an unpaired UTF-16 surrogate escape (``"\\ud800"``, which is no Unicode text), invalid UTF-8.
"""

from __future__ import annotations

import gc
import re
import threading
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import msgspec

from .errors import BadRequest, PayloadTooLarge

_BOM = b"\xef\xbb\xbf"
_STRUCTURE = b'[]{}",:'
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)
_DELTAS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1 opens, -1 closes
_CHUNK = 1 << 20
_PAUSE_GC_OVER = 65536  # bodies larger than this are parsed with the cyclic collector paused


@dataclass(frozen=True)
class JsonLimits:
    """The bounds of one parsed body (see the module's documentation)."""

    max_values: int = 4_000_000
    max_containers: int = 500_000
    max_depth: int = 256


DEFAULT_LIMITS = JsonLimits()


def check(data: bytes | bytearray | memoryview, limits: JsonLimits = DEFAULT_LIMITS) -> None:
    """Raise PayloadTooLarge or BadRequest, naming the setting, when ``data`` holds more values or
    arrays and objects than ``limits`` allow, or nests them deeper; whether or not it is valid JSON."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    most = (len(data) + 1) // 2  # of anything a body this long can hold
    if most <= limits.max_depth and most <= limits.max_containers and most <= limits.max_values:
        return
    opens = data.count(b"[") + data.count(b"{")
    values_bound = (len(data) + 1) // 2  # every value but the first follows a , : [ or {
    if values_bound > limits.max_values:
        values_bound = 1 + data.count(b",") + data.count(b":") + opens
    if opens <= limits.max_depth and opens <= limits.max_containers and values_bound <= limits.max_values:
        return
    brackets, separators, containers = _structure(data, limits.max_containers)
    if containers > limits.max_containers:
        raise PayloadTooLarge(f"JSON body holds more than MAX_JSON_CONTAINERS={limits.max_containers} arrays and "
                              f"objects ({containers} counted; a setting of the gateway's configuration)")
    values = 1 + separators + containers
    if values > limits.max_values:
        raise PayloadTooLarge(f"JSON body holds about {values} values, more than MAX_JSON_VALUES="
                              f"{limits.max_values} (a setting of the gateway's configuration)")
    if containers > limits.max_depth:
        depth = _depth(brackets)
        if depth > limits.max_depth:
            raise BadRequest(f"JSON body nests arrays and objects {depth} deep, deeper than MAX_JSON_DEPTH="
                             f"{limits.max_depth} (a setting of the gateway's configuration)")


@dataclass(frozen=True)
class Shape:
    """What :func:`check` counts in a body: ``values`` counts every number, string, key, literal,
    array and object (an empty array or object twice: it is told apart only by parsing)."""

    containers: int
    values: int
    depth: int


def shape(data: bytes | bytearray) -> Shape:
    """The counts :func:`check` bounds, all of them, however large."""
    brackets, separators, containers = _structure(data)
    return Shape(containers, 1 + separators + containers, _depth(brackets))


def _depth(brackets: bytes) -> int:
    """How deeply ``brackets`` (the body's, outside its strings) nest: the highest running sum."""
    return max(accumulate(array("b", brackets.translate(_DELTAS))), default=0)


def _structure(data: bytes | bytearray, max_containers: int | None = None) -> tuple[bytes, int, int]:
    """The brackets of ``data`` outside its strings, in order, how many , and : are outside them, and
    how many arrays and objects open; a slice at a time (a few MB at most, whatever the body), and no
    further once more than ``max_containers`` are found.

    Each slice keeps only its structure (brackets, separators, quotes) and drops its empty quote
    pairs (a string without structure, or nothing between two strings: either way the two sides
    are the same, in or out); a piece after an even number of quotes (one more when the slice
    begins in a string) is outside the strings."""
    if b"\\" in data:  # escapes, left to right as JSON reads them: after \\ pairs, \" is a quote in a string
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept: list[bytes] = []
    separators = containers = 0
    inside = False
    for start in range(0, len(data), _CHUNK):
        reduced = data[start:start + _CHUNK].translate(None, _NOT_STRUCTURE).replace(b'""', b"")
        if b'"' in reduced:
            pieces = reduced.split(b'"')
            reduced = b"".join(pieces[1::2] if inside else pieces[0::2])
            inside ^= len(pieces) % 2 == 0
        elif inside:  # a slice wholly inside a string
            continue
        brackets = reduced.translate(None, b",:")
        separators += len(reduced) - len(brackets)
        containers += brackets.count(b"[") + brackets.count(b"{")
        kept.append(brackets)
        if max_containers is not None and containers > max_containers:
            break
    return b"".join(kept), separators, containers


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic collector while any thread is inside (parsing makes no cycles: what it
    makes is freed by reference counts as ever; only the collector's passes over it are saved)."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if not _gc_pausers:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if not _gc_pausers and _gc_was_enabled:
                gc.enable()


_decode = msgspec.json.Decoder().decode


def loads_object(data: bytes | bytearray | memoryview, limits: JsonLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse a request body that must be a JSON object within ``limits``; raise BadRequest (or
    PayloadTooLarge past a count) with a message naming what is wrong, and where."""
    if not data:
        raise BadRequest("Request body is empty: send a JSON object such as {\"SIGNATURE\": \"<endpoint>\"}")
    if isinstance(data, memoryview):
        data = data.tobytes()
    if data.startswith(_BOM):
        data = data[3:]
    check(data, limits)
    try:
        if len(data) > _PAUSE_GC_OVER:
            with collector_paused():
                value = _decode(data)
        else:
            value = _decode(data)
    except (msgspec.MsgspecError, ValueError) as exc:  # ValueError: invalid UTF-8 in a string
        raise BadRequest(_explain(bytes(data), exc)) from None
    except RecursionError:
        raise BadRequest(f"JSON body nests arrays and objects deeper than MAX_JSON_DEPTH={limits.max_depth}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"JSON body must be an object, got {_JSON_NAMES.get(type(value), type(value).__name__)}")
    return value


def signature_of(body: dict[str, Any]) -> str:
    """The ``SIGNATURE`` a request body names; BadRequest when it names none."""
    signature = body.get("SIGNATURE")
    if signature is None:
        raise BadRequest("Bad input. SIGNATURE not found: send {\"SIGNATURE\": \"<endpoint>\", ...}")
    if not isinstance(signature, str):
        raise BadRequest(f"SIGNATURE must be a string, got {_JSON_NAMES.get(type(signature), 'an object')}")
    return signature


_JSON_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                             rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_MAX_BLAME_DEPTH = 8
_BYTE = re.compile(r"\(byte (\d+)\)")
_KEY = re.compile(rb'"((?:[^"\\]|\\.){1,100})"\s*:')
_RAW_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw]).decode


def _explain(data: bytes, exc: Exception) -> str:
    """Why ``data`` is refused, in words a client can act on, with the field at fault where it is found."""
    path, failure = _blame(data, exc)
    where = f"field {path!r}: " if path else ""
    text = str(exc)
    if _LONE_SURROGATE.search(failure):
        return (f"Malformed JSON body: {where}a string holds an unpaired UTF-16 surrogate escape (such as "
                "\\ud800), which is not Unicode text")
    if isinstance(exc, msgspec.ValidationError) and "out of range" in text:
        return f"Malformed JSON body: {where}a number is out of range (such as 1e400): JSON numbers here are finite"
    if isinstance(exc, UnicodeDecodeError):
        return f"Malformed JSON body: {where}a string is not valid UTF-8"
    at = _BYTE.search(text)
    if at is not None and data[int(at.group(1)):].lstrip(b"-")[:3] in (b"NaN", b"Inf"):
        return f"Malformed JSON body: {where}NaN and Infinity are not JSON numbers"
    if "truncated" in text:
        return "Malformed JSON body: it ends in the middle of a value"
    return f"Malformed JSON body: {where}{text.removeprefix('JSON is malformed: ')}"


def _blame(data: bytes, exc: Exception) -> tuple[str, bytes]:
    """The path of the innermost member or item whose value fails to parse (``"inputs.text"``,
    ``"texts[2]"``; "" when it cannot be told) and that value's bytes: each level's members are
    found without parsing them (msgspec.Raw), and the first one that fails is looked into, at most
    _MAX_BLAME_DEPTH levels deep."""
    path, failing = "", data
    for _ in range(_MAX_BLAME_DEPTH):
        stripped = failing.lstrip()
        try:
            if stripped[:1] == b"{":
                children = list(_RAW_MEMBERS(stripped).items())
            elif stripped[:1] == b"[":
                children = list(enumerate(_RAW_ITEMS(stripped)))
            else:
                break
        except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
            # This level's own syntax fails (an unpaired surrogate fails it too): the member
            # written last before the byte it names, if any, is the one at fault.
            at = _BYTE.search(str(exc)) or _LONE_SURROGATE.search(stripped)
            key = _last_key(stripped, int(at.group(1)) if at.re is _BYTE else at.start()) if at else None
            if key is not None:
                path += f".{key}" if path else key
            break
        for key, raw in children:
            try:
                _decode(raw)
            except (msgspec.MsgspecError, ValueError, RecursionError):
                path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
                failing = bytes(raw)
                break
        else:
            break
    return path, failing


def _last_key(data: bytes, end: int) -> str | None:
    """The last ``"key":`` written in the 4 KB before byte ``end`` (None when there is none)."""
    matches = list(_KEY.finditer(data, max(0, end - 4096), end))
    if not matches:
        return None
    found = matches[-1]
    try:
        return msgspec.json.decode(b'"' + found.group(1) + b'"')
    except (msgspec.MsgspecError, ValueError):
        return found.group(1).decode("utf-8", "replace")
