"""API keys for the inference routes, with per-key limits (``BIS_API_KEYS_FILE``).

The file (JSON) lists the keys by name, each stored only as the SHA-256 of the key::

    {"KEYS": [{"NAME": "team-a", "SHA256": "<hex>", "ENDPOINTS": ["*"], "RPS": 50, "BURST": 100,
               "CONCURRENCY": 8}]}

``bis keys add NAME`` makes a key, prints it once and adds its entry. A request gives its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the key's hash is looked up (a dict of
hashes: no timing difference to learn a key from) and compared in constant time. Without a valid
key: 401; an endpoint the key does not list: 403; past ``RPS`` (a token bucket of ``BURST``) or
``CONCURRENCY`` requests in flight: 429 with ``Retry-After``. Keys are never logged; metrics count
by the key's name. Without the file (the default) nothing changes: the headers are ignored.
The file is read again by SIGHUP and ``/reload_config``; the admin token is no API key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from ..errors import ServingError

ENV = "BIS_API_KEYS_FILE"
KEY_PREFIX = "bis_"


class Unauthorized(ServingError):
    status = 401


class Forbidden(ServingError):
    status = 403


class TooManyRequests(ServingError):
    status = 429


def hash_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class KeyEntry:
    name: str
    sha256: str
    endpoints: frozenset[str] | None  # None: every endpoint ("*")
    rps: float | None
    burst: float
    concurrency: int | None
    tokens: float = 0.0  # the token bucket (RPS, BURST)
    refilled: float = 0.0
    in_flight: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # outcome -> requests

    def allows(self, signature: str) -> bool:
        return self.endpoints is None or signature in self.endpoints


def parse(data: Any, where: str) -> dict[str, KeyEntry]:
    """The keys of a file's JSON, by hash; ValueError naming what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("KEYS"), list):
        raise ValueError(f"{where}: expected {{\"KEYS\": [...]}}")
    keys: dict[str, KeyEntry] = {}
    for number, raw in enumerate(data["KEYS"]):
        at = f"{where}: KEYS[{number}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("NAME"), str) or not raw["NAME"]:
            raise ValueError(f"{at}: expected an object with a NAME")
        digest = raw.get("SHA256")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{at}.SHA256: expected the key's SHA-256, 64 lowercase hex digits")
        endpoints = raw.get("ENDPOINTS", ["*"])
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ValueError(f"{at}.ENDPOINTS: expected a list of endpoint names, or [\"*\"]")
        limits = {name: raw.get(name) for name in ("RPS", "BURST", "CONCURRENCY")}
        for name, value in limits.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{at}.{name}: expected a number > 0, got {value!r}")
        rps = limits["RPS"]
        burst = float(limits["BURST"] or (rps if rps else 1))
        keys[digest] = KeyEntry(raw["NAME"], digest, None if "*" in endpoints else frozenset(endpoints),
                                float(rps) if rps else None, burst,
                                int(limits["CONCURRENCY"]) if limits["CONCURRENCY"] else None, tokens=burst)
    return keys


class ApiKeys:
    """The keys in force (none: off), and each key's limits as they are now."""

    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None
        self._keys: dict[str, KeyEntry] = {}
        self._lock = threading.Lock()
        self.reload()

    @property
    def on(self) -> bool:
        return self.path is not None

    def reload(self) -> None:
        """Read the file again (ValueError for one that is not a keys file: the keys in force stay)."""
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{ENV}={self.path}: cannot be read: {exc}") from None
        keys = parse(data, f"{ENV}={self.path}")
        with self._lock:
            for digest, entry in keys.items():  # a key kept keeps its counts and what it has in flight
                old = self._keys.get(digest)
                if old is not None:
                    entry.counts, entry.in_flight = old.counts, old.in_flight
            self._keys = keys

    def admit(self, authorization: bytes | None, api_key: bytes | None, signature: str) -> KeyEntry | None:
        """The key of a request for ``signature`` (None when keys are off), counted in flight (pair
        with :meth:`done`); 401, 403 or 429 as a ServingError."""
        if self.path is None:
            return None
        presented = _presented(authorization, api_key)
        digest = hash_of(presented) if presented else ""
        with self._lock:
            entry = self._keys.get(digest)
            if entry is None or not hmac.compare_digest(entry.sha256, digest):
                raise Unauthorized("a valid API key is needed: send it as Authorization: Bearer <key> or X-API-Key")
            if not entry.allows(signature):
                entry.counts["forbidden"] = entry.counts.get("forbidden", 0) + 1
                raise Forbidden(f"this API key ({entry.name}) may not call {signature!r}")
            now = time.monotonic()
            if entry.rps is not None:
                entry.tokens = min(entry.burst, entry.tokens + (now - entry.refilled) * entry.rps)
                entry.refilled = now
                if entry.tokens < 1:
                    entry.counts["limited"] = entry.counts.get("limited", 0) + 1
                    wait = math.ceil((1 - entry.tokens) / entry.rps)
                    raise TooManyRequests(f"API key {entry.name}: over its RPS={entry.rps:g}", retry_after=wait)
            if entry.concurrency is not None and entry.in_flight >= entry.concurrency:
                entry.counts["limited"] = entry.counts.get("limited", 0) + 1
                raise TooManyRequests(f"API key {entry.name}: {entry.in_flight} requests in flight, its "
                                      f"CONCURRENCY={entry.concurrency}", retry_after=1)
            if entry.rps is not None:
                entry.tokens -= 1
            entry.in_flight += 1
            entry.counts["admitted"] = entry.counts.get("admitted", 0) + 1
            return entry

    def done(self, entry: KeyEntry | None) -> None:
        if entry is not None:
            with self._lock:
                entry.in_flight -= 1

    def figures(self) -> list[tuple[str, str, int]]:
        """(key name, outcome, requests) for the metrics: by name, never by key."""
        with self._lock:
            return [(entry.name, outcome, count) for entry in self._keys.values()
                    for outcome, count in sorted(entry.counts.items())]


class KeysCollector:
    """``bis_api_key_requests_total{key,outcome}``: requests by key name (admitted, forbidden,
    limited; a request without a valid key has no name to count it by)."""

    def __init__(self, keys: ApiKeys):
        self.keys = keys

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("bis_api_key_requests", "Requests by API key name and outcome",
                                     labels=["key", "outcome"])
        for name, outcome, count in self.keys.figures():
            family.add_metric([name, outcome], count)
        yield family


def _presented(authorization: bytes | None, api_key: bytes | None) -> str:
    if api_key:
        return api_key.decode("latin-1").strip()
    if authorization and authorization[:7].lower() == b"bearer ":
        return authorization[7:].decode("latin-1").strip()
    return ""


def add_key(path: Path, name: str, endpoints: list[str], rps: float | None, burst: float | None,
            concurrency: int | None) -> str:
    """Make a new key named ``name``, add its entry (hashed) to the file at ``path`` (made when
    missing, mode 0600), and return the key: it is shown only now."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"KEYS": []}
    parse(data, str(path))
    if any(entry.get("NAME") == name for entry in data["KEYS"]):
        raise ValueError(f"{path}: a key named {name!r} is there already")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"NAME": name, "SHA256": hash_of(key), "ENDPOINTS": endpoints or ["*"]}
    for field_name, value in (("RPS", rps), ("BURST", burst), ("CONCURRENCY", concurrency)):
        if value is not None:
            entry[field_name] = value
    data["KEYS"].append(entry)
    parse(data, str(path))
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
    os.replace(partial, path)
    return key
