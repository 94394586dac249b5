"""The gateway's Open Inference Protocol (KServe V2) routes other than infer: server metadata,
health, model metadata and model readiness (Flask, on the route threads). Infer runs in the event
loop (:mod:`.routing.v2path`).

Every endpoint is a model of the same name. Health follows the protocol: 200 means true, 400
false. Errors under ``/v2`` are the protocol's ``{"error": "<message>"}`` (the app's error
handlers, installed with ``plain_under="/v2"``). A model's metadata comes from its model server
(``MODEL_METADATA``, see :mod:`basic_inference_server.server.v2`) and is kept per server process
and generation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from ..errors import ServerDied, Unavailable
from ..lib_ver import LIB_VER
from ..webutil import json_response
from .apikeys import ApiKeys
from .routing.router import Router
from .routing.v2path import pipeline_version, route_model, served_versions
from .supervision.handle import ChildHandle

SERVER_NAME = "basic_inference_server"
EXTENSIONS = ["binary_tensor_data"]  # Triton's name for the binary tensor extension
METADATA_TIMEOUT = 5.0


def install_v2_routes(app: Flask, router: Router, not_ready: Callable[[], dict[str, str]],
                      extensions: list[str] | None = None, keys: ApiKeys | None = None) -> None:
    """``extensions``: those on besides binary tensors (system_shared_memory with ALLOW_CLIENT_SHM);
    ``keys``: with API keys on, the server's and a model's metadata and a model's readiness need a
    valid key (one allowed that model), as infer does; the health routes never do."""
    listed = [*EXTENSIONS, *(extensions or [])]

    def check_key(name: str | None) -> None:
        if keys is not None and keys.on:
            keys.check(request.headers, name)
    metadata_cache: dict[tuple[str, int | None, int], dict[str, Any]] = {}
    cache_lock = threading.Lock()

    def metadata_of(handle: ChildHandle, name: str) -> dict[str, Any]:
        key = (handle.name, handle.pid, handle.generation)
        with cache_lock:
            cached = metadata_cache.get(key)
        if cached is not None:
            return cached
        if handle.http is None:
            raise Unavailable(f"model {name!r} is not running")
        try:
            response = handle.http.request("GET", f"/v2/models/{name}", timeout=METADATA_TIMEOUT)
            body = json.loads(response.data or b"{}")
        except (OSError, ValueError) as exc:
            raise ServerDied(f"model server of {name!r} gave no metadata: {exc}") from None
        if response.status != 200:
            raise ServerDied(f"model server of {name!r} answered {response.status} for its metadata: "
                             f"{body.get('error', '')}")
        metadata = {"name": name, "platform": body.get("platform", ""),
                    "inputs": body.get("inputs", []), "outputs": body.get("outputs", [])}
        with cache_lock:
            for old in [k for k in metadata_cache if k[0] == handle.name]:
                del metadata_cache[old]  # an earlier process or generation of this server
            metadata_cache[key] = metadata
        return metadata

    @app.route("/v2", methods=["GET"])
    def v2_server_metadata() -> Response:
        check_key(None)
        return json_response({"name": SERVER_NAME, "version": LIB_VER, "extensions": listed})

    @app.route("/v2/health/live", methods=["GET"])
    def v2_live() -> Response:
        return json_response({"live": True})

    @app.route("/v2/health/ready", methods=["GET"])
    def v2_ready() -> Response:
        waiting = not_ready()
        ready = not waiting and not router.admission.draining
        return json_response({"ready": ready}, 200 if ready else 400)

    @app.route("/v2/models/<name>", methods=["GET"])
    @app.route("/v2/models/<name>/versions/<version>", methods=["GET"])
    def v2_model_metadata(name: str, version: str | None = None) -> Response:
        check_key(name)
        pipeline = router.table.pipelines.get(name)
        if pipeline is not None:  # its inputs are its first step's, its outputs its last step's
            pipeline_version(pipeline, version)
            first = [step for step in pipeline.order if not pipeline.parents[step]]
            inputs = metadata_of(route_model(router, first[0], None), first[0])["inputs"] if len(first) == 1 else []
            outputs = metadata_of(route_model(router, pipeline.last, None), pipeline.last)["outputs"]
            return json_response({"name": name, "versions": ["1"], "platform": "pipeline", "inputs": inputs,
                                  "outputs": outputs})
        metadata = metadata_of(route_model(router, name, version), name)
        return json_response({"name": name, "versions": served_versions(router, name), **metadata})

    @app.route("/v2/models/<name>/ready", methods=["GET"])
    @app.route("/v2/models/<name>/versions/<version>/ready", methods=["GET"])
    def v2_model_ready(name: str, version: str | None = None) -> Response:
        check_key(name)
        pipeline = router.table.pipelines.get(name)
        try:
            if pipeline is not None:  # ready when every step is
                pipeline_version(pipeline, version)
                for step in pipeline.order:
                    route_model(router, step, None)
            else:
                route_model(router, name, version)
        except Unavailable:
            return json_response({"name": name, "ready": False}, 400)
        return json_response({"name": name, "ready": True})

    @app.route("/v2/models/<name>/infer", methods=["POST"])
    @app.route("/v2/models/<name>/versions/<version>/infer", methods=["POST"])
    def v2_infer(name: str, version: str | None = None) -> Response:
        # The HTTP front answers these POSTs in its event loop (routing.v2path); here, Flask
        # answers the other methods 405 with Allow: POST.
        raise Unavailable("V2 infer is answered by the gateway's HTTP front")
