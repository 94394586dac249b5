"""The API keys file (``BIS_API_KEYS_FILE``): keys by name, each kept only as its SHA-256, with the
endpoints it may call and its limits. Read by the gateway (:mod:`.gateway.apikeys`), written by
``bis keys add`` (:func:`add_key`)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = "BIS_API_KEYS_FILE"
KEY_PREFIX = "bis_"


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
    """The keys of a file's JSON, by hash; ValueError naming what is wrong (a NAME or a key listed
    twice: a job is its key's by NAME, and a key is found by its hash)."""
    if not isinstance(data, dict) or not isinstance(data.get("KEYS"), list):
        raise ValueError(f"{where}: expected {{\"KEYS\": [...]}}")
    keys: dict[str, KeyEntry] = {}
    names: set[str] = set()
    for number, raw in enumerate(data["KEYS"]):
        at = f"{where}: KEYS[{number}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("NAME"), str) or not raw["NAME"]:
            raise ValueError(f"{at}: expected an object with a NAME")
        digest = raw.get("SHA256")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{at}.SHA256: expected the key's SHA-256, 64 lowercase hex digits")
        if raw["NAME"] in names or digest in keys:
            raise ValueError(f"{at}: {'NAME ' + repr(raw['NAME']) if raw['NAME'] in names else 'its SHA256'} is "
                             "listed twice: each key has a name and a hash of its own")
        names.add(raw["NAME"])
        endpoints = raw.get("ENDPOINTS", ["*"])
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ValueError(f"{at}.ENDPOINTS: expected a list of endpoint names, or [\"*\"]")
        limits = {name: raw.get(name) for name in ("RPS", "BURST", "CONCURRENCY")}
        for name, value in limits.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{at}.{name}: expected a number > 0, got {value!r}")
        rps = limits["RPS"]
        if limits["BURST"] is not None and limits["BURST"] < 1:
            raise ValueError(f"{at}.BURST: expected at least 1 (a request takes one), got {limits['BURST']!r}")
        burst = float(limits["BURST"] or max(1.0, rps or 1))  # (an RPS under 1 still lets one request in)
        keys[digest] = KeyEntry(raw["NAME"], digest, None if "*" in endpoints else frozenset(endpoints),
                                float(rps) if rps else None, burst,
                                int(limits["CONCURRENCY"]) if limits["CONCURRENCY"] else None, tokens=burst)
    return keys


def add_key(path: Path, name: str, endpoints: list[str], rps: float | None, burst: float | None,
            concurrency: int | None) -> str:
    """Make a new key named ``name``, add its entry (hashed) to the file at ``path`` (made when
    missing, mode 0600), and return the key: it is shown only now."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"KEYS": []}
    parse(data, str(path))
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
