"""The HTTP face of one model server: ``/run``, ``/notifications``, ``/update_workers``, ``/health``,
``/stats`` (what the gateway's ``/metrics`` reports for it)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

from .. import jsonutil, requestid
from ..errors import BadRequest, ModelError, Unavailable
from ..httpserve import InFlight
from ..notifications import GENERAL, NotificationStore
from ..webutil import (
    Answer,
    install_error_handlers,
    json_response,
    raw_json_response,
    read_body,
    read_json_object,
    require_admin,
)
from ..worker import CONTROL_KEYS
from .pool import WorkerPool

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
    admin_token: str | None = None
    execution_path: str = "/run"
    draining: bool = False
    loaded: bool = False  # the first NR_WORKERS have loaded; later growth loads in the background
    call_ids: Any = field(default_factory=lambda: itertools.count(1))
    inflight: InFlight = field(default_factory=InFlight)

    def signature_of(self, idx: int) -> str:
        return f"{self.host_id}.{self.server_class}.{self.class_name}.{idx}"

    def run(self, raw: bytes) -> Answer:
        """``POST /run``: queue the request for a worker, wait, answer ``predict_result``."""
        if self.draining:
            raise Unavailable("model server is shutting down")
        body = jsonutil.loads_object(raw)
        inputs = {k: v for k, v in body.items() if k not in CONTROL_KEYS}
        call_id = next(self.call_ids)
        with self.inflight:
            job = self.pool.submit(inputs, call_id, self.request_timeout, requestid.current())
        answer = {
            "predict_result": job.result,
            "call_id": call_id,
            "signature": self.signature_of(job.worker_idx),
            "worker_id": f"{self.host_id}:{job.worker_idx}",
        }
        try:
            return 200, jsonutil.dumps_bytes(answer), None
        except (TypeError, ValueError) as exc:
            logger.error("Call %d: result of _post_process is not JSON-serialisable: %s", call_id, exc)
            raise ModelError(f"result of _post_process is not JSON-serialisable: {exc}") from None

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
        state = "DRAINING" if self.draining else "STUCK" if stuck else "READY" if ready else "LOADING"
        body: dict[str, Any] = {"status": state, "name": self.name, "workers": stats}
        if stuck:
            body["ERROR"] = (f"{len(late)} of {stats['ready']} worker(s) stuck on a request for up to "
                             f"{max(late):.0f}s (REQUEST_TIMEOUT={self.request_timeout:g}s)")
        if self.pool.load_errors:
            body["errors"] = list(self.pool.load_errors)
        return body, 200 if ready else 503


def create_app(state: ServerState) -> Flask:
    app = Flask(f"bis-server-{state.name}", static_folder=None)
    install_error_handlers(app)

    def run() -> Response:
        # The process serves POST /run through PostFront (no Flask); this route serves the test client.
        status, body, headers = state.run(read_body(request, state.max_body_bytes))
        return raw_json_response(body, status, headers)

    app.add_url_rule(state.execution_path, "run", run, methods=["POST"])

    @app.route("/notifications", methods=["GET", "POST"])
    def notifications() -> Response:
        return json_response(state.notifications.drain())

    @app.route("/update_workers", methods=["POST"])
    def update_workers() -> Response:
        body = read_json_object(request, state.max_body_bytes)
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

    @app.route("/get_paths", methods=["GET", "POST"])
    def get_paths() -> Response:
        return json_response({"PATHS": [state.execution_path, "/notifications", "/update_workers"]})

    return app
