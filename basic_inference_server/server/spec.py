"""``ServerSpec``: everything a model server process is told by whoever starts it.

The gateway builds one per child from the endpoint's configuration and sends it as one JSON
line on the child's stdin (secrets never go on a command line); ``python -m
basic_inference_server.server --config-file PATH`` reads the same JSON from a file. Both sides
use this one class, and the server parses strictly: every field must be present with its type,
and an unknown field is an error, so a gateway and a server of different versions fail loudly
instead of falling back to defaults.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from ..jsonbody import JsonLimits


class SpecError(ValueError):
    """The server specification is incomplete or of the wrong shape."""


@dataclass(frozen=True)
class ServerSpec:
    name: str  # the child's name: the endpoint's, or "name#2" for a second replica (its log files)
    server_class: str  # the endpoint file that holds the worker class
    host: str  # the HTTP port's address
    port: int
    socket_path: str  # the internal channel's Unix socket ("" for none)
    nr_workers: int
    max_queue: int
    server_threads: int
    request_timeout: float
    stream_idle_timeout: float
    stream_timeout: float
    max_batch_size: int
    max_batch_wait_ms: float
    endpoint_config: Mapping[str, Any]  # the endpoint's entry of the configuration, keys upper-cased
    app_root: str
    workers_location: str
    workers_suffix: str
    execution_path: str
    cache_folder: str
    host_id: str
    admin_token: str | None
    max_body_bytes: int
    max_json_values: int  # MAX_JSON_VALUES, MAX_JSON_CONTAINERS, MAX_JSON_DEPTH: the bounds of a parsed body
    max_json_containers: int
    max_json_depth: int
    shutdown_grace: float
    error_file: str  # where the server writes why it could not start ("" for none)
    secret_file: str = ""  # holds what a client must send in X-Endpoint-Token to any route but /health ("": none)
    device: str = ""  # DEVICES: the device of this replica ("cpu", "cuda:1"; "" for none)
    shm_threshold_bytes: int = 65536  # SHM_THRESHOLD_KB: a pipeline value's buffers from this size go in a memfd
    allow_client_shm: bool = False  # ALLOW_CLIENT_SHM: V2 tensors in the clients' registered shared-memory regions
    standalone: bool = False  # run on its own (`endpoint <name>`), not by a gateway: BIS_ENDPOINT_TOKEN applies

    @property
    def json_limits(self) -> JsonLimits:
        return JsonLimits(self.max_json_values, self.max_json_containers, self.max_json_depth)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "endpoint_config": dict(self.endpoint_config)})

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"server spec is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"server spec: expected a JSON object, got {type(data).__name__}")
        hints = get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise SpecError(f"server spec: unknown field(s) {', '.join(unknown)}")
        missing = [name for name in names if name not in data]
        if missing:
            raise SpecError(f"server spec: missing field(s) {', '.join(missing)}")
        for name in names:
            if not _is_a(data[name], hints[name]):
                raise SpecError(f"server spec: {name}: expected {hints[name]}, got {data[name]!r}")
        return cls(**{name: _coerce(data[name], hints[name]) for name in names})


def _is_a(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_is_a(value, option) for option in hint.__args__)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if getattr(hint, "__origin__", None) is Mapping:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _coerce(value: Any, hint: Any) -> Any:
    if hint is float:
        return float(value)
    if getattr(hint, "__origin__", None) is Mapping:
        return types.MappingProxyType(value)
    return value
