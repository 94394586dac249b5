"""``GET /v1/models`` and ``GET /v1/models/<model>`` (OpenAI's API), on the route threads: the
endpoints whose entry has ``"OPENAI"``, each a model of its endpoint's name. With API keys on, a
valid key is needed, and it sees the models it may call. The completion and embedding routes run
in the event loop (:mod:`.routing.openaipath`); errors under ``/v1`` are OpenAI's error object
(the app's error handlers).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, request

from ..errors import UnknownSignature
from ..webutil import json_response
from .apikeys import ApiKeys
from .routing.router import Router

OWNER = "basic_inference_server"


def install_openai_routes(app: Flask, router: Router, keys: ApiKeys) -> None:
    created = int(time.time())

    def models() -> dict[str, dict[str, Any]]:
        """The models the caller may see, by name."""
        entry = keys.check(request.headers, None) if keys.on else None
        listed = {}
        for name, replicas in router.table.routes.servers.items():
            if replicas and replicas[0].endpoint.openai and (entry is None or entry.allows(name)):
                listed[name] = {"id": name, "object": "model", "created": created, "owned_by": OWNER}
        return listed

    @app.route("/v1/models", methods=["GET"])
    def openai_models() -> Response:
        return json_response({"object": "list", "data": sorted(models().values(), key=lambda m: m["id"])})

    @app.route("/v1/models/<path:model>", methods=["GET"])
    def openai_model(model: str) -> Response:
        found = models().get(model)
        if found is None:
            raise UnknownSignature(f"The model {model!r} does not exist: GET /v1/models lists the models")
        return json_response(found)
