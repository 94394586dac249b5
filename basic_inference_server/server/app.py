"""What the routes of one model server share (:class:`ServerState`), and its Flask routes:
``/notifications``, ``/update_workers``, ``/health``, ``/stats`` (what the gateway's ``/metrics``
reports for it). ``/run`` is :mod:`.runpath`'s, over the channel and the HTTP port alike."""

from __future__ import annotations

import hmac
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

from ..errors import BadRequest, PayloadTooLarge, Unauthorized
from ..httpserve import InFlight
from ..jsonbody import DEFAULT_LIMITS, JsonLimits
from ..states import ServerHealth
from ..webutil import (
    ENDPOINT_TOKEN_HEADER,
    ROUTE_BODY_LIMIT,
    install_error_handlers,
    json_response,
    read_json_object,
    require_admin,
)
from .notifications import GENERAL, NotificationStore
from .pool import WorkerPool
from .v2 import ModelMetadata

logger = logging.getLogger(__name__)

MAX_WORKERS = 256
STUCK_FACTOR = 3


@dataclass
class ServerState:
    """Everything the routes of one model server share."""

    name: str
    server_class: str
    class_name: str
    host_id: str
    pool: WorkerPool
    notifications: NotificationStore
    request_timeout: float
    max_body_bytes: int
    stream_idle_timeout: float = 60.0
    stream_timeout: float = 600.0
    admin_token: str | None = None
    execution_path: str = "/run"
    json_limits: JsonLimits = DEFAULT_LIMITS  # the bounds of a parsed body (MAX_JSON_*)
    shm_threshold_bytes: int = 65536  # SHM_THRESHOLD_KB: a pipeline value's buffers from this size go in a memfd
    shm_regions: Any = None  # ALLOW_CLIENT_SHM: the V2 clients' shared-memory regions (sysshm.Regions), else None
    metadata: ModelMetadata = field(default_factory=ModelMetadata)  # for the Open Inference Protocol
    openai: str | None = None  # OPENAI: chat, completions or embeddings (OpenAI's API), else None
    draining: bool = False
    loaded: bool = False  # the first NR_WORKERS have loaded; later growth loads in the background
    call_ids: Any = field(default_factory=lambda: itertools.count(1))
    inflight: InFlight = field(default_factory=InFlight)
    bodies_refused: int = 0  # past MAX_JSON_CONTAINERS or MAX_JSON_VALUES (logged at most every 10 s)
    _refused_logged: float = -10.0

    def signature_of(self, idx: int) -> str:
        return f"{self.host_id}.{self.server_class}.{self.class_name}.{idx}"

    def refused(self, exc: PayloadTooLarge) -> None:
        """Say, at most every 10 s, how many bodies past the JSON bounds were refused."""
        self.bodies_refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 10:
            self._refused_logged = now
            logger.warning("Refused %d request bodies past the JSON bounds so far (the last: %s)", self.bodies_refused,
                           exc.message)

    def health(self) -> tuple[dict[str, Any], int]:
        """READY once the first NR_WORKERS have loaded (workers added later load in the background
        while the others serve), and while the workers are not stuck.

        Stuck: every worker has been on one request past REQUEST_TIMEOUT (its client already had
        a 504), or one worker past STUCK_FACTOR x REQUEST_TIMEOUT. A thread cannot be killed, so
        the gateway recycles a stuck server.
        """
        stats = self.pool.stats()
        busy_for = self.pool.busy_for()
        late = [t for t in busy_for if t > self.request_timeout]
        stuck = bool(late) and (len(late) >= stats["ready"] or max(late) > STUCK_FACTOR * self.request_timeout)
        loaded = self.loaded or not stats["loading"]
        ready = stats["ready"] > 0 and loaded and not self.draining and not stuck
        state = (ServerHealth.DRAINING if self.draining else ServerHealth.STUCK if stuck
                 else ServerHealth.READY if ready else ServerHealth.LOADING)
        body: dict[str, Any] = {"status": state.name, "name": self.name, "workers": stats}
        if stuck:
            body["ERROR"] = (f"{len(late)} of {stats['ready']} worker(s) stuck on a request for up to "
                             f"{max(late):.0f}s (REQUEST_TIMEOUT={self.request_timeout:g}s)")
        if self.pool.load_errors:
            body["errors"] = list(self.pool.load_errors)
        return body, 200 if ready else 503


def require_token(expected: bytes | None, given: bytes | None) -> None:
    """Unauthorized unless ``given`` is the server's token (when it has one; constant-time)."""
    if expected is not None and not hmac.compare_digest(given or b"", expected):
        raise Unauthorized(f"this model server takes its token in {ENDPOINT_TOKEN_HEADER}: BIS_ENDPOINT_TOKEN for one "
                           "run on its own; one started by a gateway serves that gateway only (call the gateway)")


def create_app(state: ServerState, token: str | None = None) -> Flask:
    """The Flask routes of one model server; with ``token``, every route but ``/health`` (the
    probes') takes it in X-Endpoint-Token."""
    app = Flask(f"bis-server-{state.name}", static_folder=None)
    install_error_handlers(app)
    expected = token.encode() if token else None

    @app.before_request
    def guard() -> None:
        if expected is not None and request.path != "/health":
            require_token(expected, request.headers.get(ENDPOINT_TOKEN_HEADER, "").encode("latin-1", "replace"))

    @app.route("/notifications", methods=["GET", "POST"])
    def notifications() -> Response:
        return json_response(state.notifications.drain())

    @app.route("/update_workers", methods=["POST"])
    def update_workers() -> Response:
        body = read_json_object(request, min(state.max_body_bytes, ROUTE_BODY_LIMIT), state.json_limits)
        if state.admin_token is not None:
            require_admin(state.admin_token, request, body)
        count = body.get("NR_WORKERS")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_WORKERS:
            raise BadRequest(f"NR_WORKERS: expected an integer between 1 and {MAX_WORKERS}, got {count!r}")
        change = state.pool.resize(count)
        state.notifications.add(GENERAL, "log", "ModelServer", f"update_workers: {change}")
        return json_response({"MESSAGE": "OK", "NR_WORKERS": count, "PREVIOUS": change["previous"],
                              "WORKERS": state.pool.stats()})

    @app.route("/health", methods=["GET"])
    def health() -> Response:
        body, status = state.health()
        return json_response(body, status)

    @app.route("/stats", methods=["GET"])
    def stats() -> Response:
        return json_response({"name": state.name, "workers": state.pool.stats(), **state.pool.measured.to_json()})

    @app.route("/v2/models/<name>", methods=["GET"])
    def v2_model_metadata(name: str) -> Response:
        model = state.name.partition("#")[0]  # the endpoint's name (a replica is "<name>#<n>")
        if name != model:
            return json_response({"error": f"unknown model {name!r}: this server serves {model!r}"}, 404)
        return json_response(state.metadata.to_json(model))

    @app.route("/get_paths", methods=["GET", "POST"])
    def get_paths() -> Response:
        return json_response({"PATHS": [state.execution_path, "/notifications", "/update_workers"]})

    return app
