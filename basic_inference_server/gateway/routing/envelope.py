"""The answer envelope the gateway adds to every successful model-server answer.

A model server answers ``{"predict_result": ..., "call_id": ..., "signature": ..., "worker_id": ...}``;
the gateway adds ``time``, ``ver``, ``ver-app``, ``ver-lib``, ``gw-uptime`` and ``hostname``.
The server's JSON object is extended in place (bytes), not parsed and re-encoded, except for
``RESPONSE_FORMAT: "flat"`` where the worker's keys move to the top level for old clients.
"""

from __future__ import annotations

import datetime
import json
import socket
import time
from typing import Any

from ... import jsonutil
from ...lib_ver import LIB_VER
from ...transport.gather import Pieces


class Envelope:
    def __init__(self, app_version: str, hostname: str | None = None):
        self.app_version = app_version
        self.hostname = hostname or socket.gethostname()
        self.started = time.monotonic()
        self._extra = (0, b"")  # (second, the fields as JSON): they change once a second

    def _extra_json(self) -> bytes:
        """The fields as a JSON object's members (no braces), cached for the current second."""
        now = int(time.time())
        if self._extra[0] != now:
            self._extra = (now, json.dumps(self.fields(), separators=(",", ":")).encode("utf-8")[1:-1])
        return self._extra[1]

    def uptime(self) -> str:
        return str(datetime.timedelta(seconds=int(time.monotonic() - self.started)))

    def fields(self) -> dict[str, Any]:
        return {
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "ver": self.app_version,
            "ver-app": self.app_version,
            "ver-lib": LIB_VER,
            "gw-uptime": self.uptime(),
            "hostname": self.hostname,
        }

    def add_to(self, payload: dict[str, Any]) -> dict[str, Any]:
        payload.update(self.fields())
        return payload

    def wrap(self, data: bytes, flat: bool = False) -> bytes:
        """Add the envelope to a JSON object given as bytes."""
        if flat:
            answer = json.loads(data)
            if not isinstance(answer, dict):
                raise ValueError("model server answer is not a JSON object")
            return jsonutil.dumps_bytes(self.add_to(_flatten(answer)))
        return self.pieces(data).joined()

    def pieces(self, data: bytes | bytearray) -> Pieces:
        """The JSON object ``data`` with the envelope's members added, as pieces to write gathered:
        the object up to its closing brace (a view, not a copy), the members, the brace."""
        end = len(data)
        while end and data[end - 1] in _SPACE:
            end -= 1
        if not data.startswith(b"{") or end < 2 or data[end - 1] != _CLOSE:
            raise ValueError("model server answer is not a JSON object")
        end -= 1
        while data[end - 1] in _SPACE:
            end -= 1
        return Pieces((memoryview(data)[:end], b"" if end == 1 else b",", self._extra_json(), b"}"))


_SPACE = frozenset(b" \t\r\n")
_CLOSE = ord("}")


def _flatten(answer: dict[str, Any]) -> dict[str, Any]:
    result = answer.pop("predict_result", None)
    if isinstance(result, dict):
        flat = dict(result)
        flat.update(answer)
        return flat
    answer["predict_result"] = result
    return answer
