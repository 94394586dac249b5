"""API keys for the inference routes, with per-key limits (``BIS_API_KEYS_FILE``).

The file (JSON) lists the keys by name, each stored only as the SHA-256 of the key::

    {"KEYS": [{"NAME": "team-a", "SHA256": "<hex>", "ENDPOINTS": ["*"], "RPS": 50, "BURST": 100,
               "CONCURRENCY": 8}]}

``bis keys add NAME`` makes a key, prints it once and adds its entry. A request gives its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the key's SHA-256 is looked up (a dict
of hashes), so that what a lookup's time could tell is about a hash, never about a key. Without a valid
key: 401; an endpoint the key does not list: 403; past ``RPS`` (a token bucket of ``BURST``) or
``CONCURRENCY`` requests in flight: 429 with ``Retry-After``. Keys are never logged; metrics count
by the key's name. Without the file (the default) nothing changes: the headers are ignored.
The file is read again by SIGHUP and ``/reload_config``; the admin token is no API key.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from ..apikeyfile import ENV, KeyEntry, hash_of, parse
from ..errors import Forbidden, TooManyRequests, Unauthorized
from ..webutil import bearer_of


class ApiKeys:
    """The keys in force (none: off), and each key's limits as they are now."""

    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None
        self.on = self.path is not None  # (read on every /run: an attribute, not a property)
        self._keys: dict[str, KeyEntry] = {}
        self._lock = threading.Lock()
        self.reload()

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
            for digest, entry in keys.items():  # a key kept keeps its counts, what it has in flight
                old = self._keys.get(digest)      # and its bucket (a reload refills nobody's)
                if old is not None:
                    entry.counts, entry.in_flight = old.counts, old.in_flight
                    entry.tokens, entry.refilled = min(old.tokens, entry.burst), old.refilled
            self._keys = keys

    def admit(self, authorization: bytes | None, api_key: bytes | None, signature: str | None) -> KeyEntry | None:
        """The key of a request for ``signature`` (None: a route of no endpoint, which any valid key
        may call), counted in flight (pair with :meth:`done`); None when keys are off; 401, 403 or
        429 as a ServingError."""
        if self.path is None:
            return None
        digest = _digest(authorization, api_key)
        with self._lock:
            entry = self._valid(digest)
            if signature is not None:
                self._allow(entry, signature)
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

    def identify(self, authorization: bytes | None, api_key: bytes | None) -> KeyEntry:
        """The valid key a request presents (401 otherwise), counted against none of its limits: a
        key reading what it submitted (a job, a batch)."""
        digest = _digest(authorization, api_key)
        with self._lock:
            return self._valid(digest)

    def _valid(self, digest: str) -> KeyEntry:
        """The key of ``digest`` (under the lock); 401 for none."""
        entry = self._keys.get(digest)
        if entry is None:
            raise Unauthorized("a valid API key is needed: send it as Authorization: Bearer <key> or X-API-Key")
        return entry

    def allow(self, entry: KeyEntry, signature: str) -> None:
        """403 unless the key already admitted may also call ``signature`` (a request routed again
        by the SIGNATURE its model server read; a job's endpoint, read from its body)."""
        with self._lock:
            self._allow(entry, signature)

    @staticmethod
    def _allow(entry: KeyEntry, signature: str) -> None:
        """(Under the lock.) 403, counted as forbidden, unless the key may call ``signature``."""
        if not entry.allows(signature):
            entry.counts["forbidden"] = entry.counts.get("forbidden", 0) + 1
            raise Forbidden(f"this API key ({entry.name}) may not call {signature!r}")

    def check(self, headers: Any, signature: str | None) -> KeyEntry | None:
        """:meth:`admit` then :meth:`done` for a route answered at once (a Flask route's ``headers``):
        the key that called it."""
        entry = self.admit(headers.get("Authorization", "").encode("latin-1"),
                           headers.get("X-API-Key", "").encode("latin-1") or None, signature)
        self.done(entry)
        return entry

    def done(self, entry: KeyEntry | None) -> None:
        """A request of ``entry`` has been answered: its place is given back to the key in force
        when a reload meanwhile made a new entry of it, which took over its counts (the same
        ``counts``); else to ``entry`` itself (a key dropped, or dropped and added again)."""
        if entry is not None:
            with self._lock:
                current = self._keys.get(entry.sha256)
                (current if current is not None and current.counts is entry.counts else entry).in_flight -= 1

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


def _digest(authorization: bytes | None, api_key: bytes | None) -> str:
    presented = _presented(authorization, api_key)
    return hash_of(presented) if presented else ""


def _presented(authorization: bytes | None, api_key: bytes | None) -> str:
    if api_key:
        return api_key.decode("latin-1").strip()
    return bearer_of(authorization) or ""
