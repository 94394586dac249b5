"""The Open Inference Protocol's system shared-memory extension on the gateway (Flask, on the route
threads): a client on this host registers its POSIX shared-memory regions, and its infer requests
name them instead of carrying tensors (see :mod:`..transport.sysshm`; the model servers read and
write the regions).

- ``GET /v2/systemsharedmemory[/region/<name>]/status``: the regions, ``[{"name", "key", "offset",
  "byte_size"}]``;
- ``POST /v2/systemsharedmemory/region/<name>/register`` with ``{"key", "offset", "byte_size"}``;
- ``POST /v2/systemsharedmemory[/region/<name>]/unregister``.

Off unless ``ALLOW_CLIENT_SHM`` is true (403 then, saying so); only loopback clients may use these
routes (403 for any other: a region is memory of this host).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, request

from ..errors import Forbidden
from ..transport.sysshm import Registry
from ..webutil import json_response
from .apikeys import ApiKeys

EXTENSION = "system_shared_memory"  # its name in the server metadata's extensions (Triton's)
PREFIX = "/v2/systemsharedmemory"



def install_v2_shm_routes(app: Flask, registry: Registry | None, is_loopback: Callable[[str | None], bool],
                          keys: ApiKeys | None = None) -> None:
    def allowed() -> Registry:
        if registry is None:
            raise Forbidden("the system shared-memory extension is off: set ALLOW_CLIENT_SHM to true in "
                            "config_gateway.txt to let clients on this host register regions")
        if not is_loopback(request.remote_addr):
            raise Forbidden("shared-memory regions are registered by clients on this host only (loopback)")
        if keys is not None and keys.on:  # with API keys, any valid one (regions are no endpoint's)
            keys.check(request.headers, None)
        return registry

    @app.route(f"{PREFIX}/status", methods=["GET"])
    @app.route(f"{PREFIX}/region/<name>/status", methods=["GET"])
    def shm_status(name: str | None = None) -> Response:
        return json_response(allowed().status(name))

    @app.route(f"{PREFIX}/region/<name>/register", methods=["POST"])
    def shm_register(name: str) -> Response:
        regions = allowed()
        regions.register(name, request.get_json(force=True, silent=True))
        return json_response({})

    @app.route(f"{PREFIX}/unregister", methods=["POST"])
    @app.route(f"{PREFIX}/region/<name>/unregister", methods=["POST"])
    def shm_unregister(name: str | None = None) -> Response:
        allowed().unregister(name)
        return json_response({})
