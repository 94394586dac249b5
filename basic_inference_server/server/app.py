"""The HTTP face of one model server: ``/run``, ``/notifications``, ``/update_workers``, ``/health``,
``/stats`` (what the gateway's ``/metrics`` reports for it)."""

from __future__ import annotations

import hmac
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

from .. import jsonbody, jsonutil, requestid
from ..errors import (
    BadRequest,
    Misrouted,
    ModelError,
    PayloadTooLarge,
    ServingError,
    ShuttingDown,
    Unauthorized,
    body_too_large,
    error_body,
)
from ..httpserve import InFlight
from ..jsonbody import DEFAULT_LIMITS, JsonLimits
from ..transport.frames import BINARY, STREAM, reply_frame
from ..transport.tuning import trimmer
from ..transport.v2codec import encode_response
from ..webutil import (
    ENDPOINT_TOKEN_HEADER,
    ROUTE_BODY_LIMIT,
    Answer,
    install_error_handlers,
    json_response,
    read_json_object,
    require_admin,
)
from .channel import Connection
from .job import Job
from .notifications import GENERAL, NotificationStore
from .pool import WorkerPool
from .streams import BATCH_BACKLOG, StreamOut
from .v2 import ModelMetadata, V2Call
from .v2 import accept as accept_v2
from .v2 import error_body as v2_error_body
from .worker import CONTROL_KEYS

logger = logging.getLogger(__name__)

MAX_WORKERS = 256
LARGE_BODY = 65536  # a body larger than this returns its memory to the system once read (tuning.Trimmer)
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
    metadata: ModelMetadata = field(default_factory=ModelMetadata)  # for the Open Inference Protocol
    draining: bool = False
    loaded: bool = False  # the first NR_WORKERS have loaded; later growth loads in the background
    call_ids: Any = field(default_factory=lambda: itertools.count(1))
    inflight: InFlight = field(default_factory=InFlight)
    bodies_refused: int = 0  # past MAX_JSON_CONTAINERS or MAX_JSON_VALUES (logged at most every 10 s)
    _refused_logged: float = -10.0

    def __post_init__(self) -> None:
        self.pool.accept = self.accept  # a request's body is read by the worker that takes it

    def signature_of(self, idx: int) -> str:
        return f"{self.host_id}.{self.server_class}.{self.class_name}.{idx}"

    def stream_out(self, send: Callable[[bytes], None], push: Callable[[], None]) -> StreamOut:
        """Where a streamed request's items go (a batch keeps a few items per request when its
        client is slow, so that the others of the batch go on)."""
        return StreamOut(send, push, backlog=BATCH_BACKLOG if self.pool.max_batch_size > 1 else 0)

    def run_frame(self, conn: Connection, tag: int, request_id: str, routed: str, raw: bytes, oversize: int,
                  stream: bool = False, v2: tuple[int | None, str] | None = None) -> None:
        """A request from the internal channel (``v2``: an Open Inference Protocol infer request,
        its JSON header length and model version): queue its body without reading it; the worker
        that takes it reads it (:meth:`accept`) and sends the answer (errors found here are
        answered at once)."""
        token = requestid.bind(request_id)
        try:
            if oversize:
                raise body_too_large(self.max_body_bytes, oversize)
            if self.draining:
                raise ShuttingDown()
            job = Job(None, next(self.call_ids), request_id, on_done=lambda job: self._deliver(conn, tag, job),
                      raw=raw, routed=routed)
            if v2 is not None:
                job.v2 = V2Call(routed, v2[1], v2[0])
            else:
                job.stream_wanted = stream
                job.open_stream = lambda: self.stream_out(lambda item: conn.queue_item(tag, item), conn.push)
            conn.pending[tag] = job
            self.inflight.enter()
            try:
                self.pool.enqueue(job)
            except BaseException:
                conn.pending.pop(tag, None)
                self.inflight.exit()
                raise
        except ServingError as exc:
            body = v2_error_body(exc) if v2 is not None else jsonutil.dumps_bytes(exc.to_body())
            conn.reply(tag, exc.status, body, _retry_after(exc))
        except Exception as exc:
            logger.exception("Unhandled %s on a channel request", type(exc).__name__)
            body = error_body("InternalError", f"internal error: {type(exc).__name__}")
            conn.reply(tag, 500, jsonutil.dumps_bytes({"error": body["ERROR"]} if v2 is not None else body))
        finally:
            requestid.unbind(token)

    def accept(self, job: Job) -> None:
        """Read a queued request's body into its worker inputs, on the worker that runs it: parsed
        within the JSON limits, checked to name the endpoint it was routed to (else Misrouted, with
        the SIGNATURE it names), its stream opened when the body asks for one (``"STREAM": true``).
        Raises the ServingError its client is answered."""
        raw, job.raw = job.raw, None
        try:
            if job.v2 is not None:
                job.inputs, job.v2.request = accept_v2(self.metadata, raw, job.v2.header_length, self.json_limits)
                return
            body = jsonbody.loads_object(raw, self.json_limits)
        except PayloadTooLarge as exc:
            self._refused(exc)
            raise
        finally:
            if len(raw) > LARGE_BODY:
                trimmer.freed(len(raw))  # its memory goes back to the system once it is gone
            del raw
        if job.routed and body.get("SIGNATURE") != job.routed:
            signature = jsonbody.signature_of(body)
            raise Misrouted(f"the body names endpoint {signature!r}, not {job.routed!r}", signature=signature)
        job.inputs = {k: v for k, v in body.items() if k not in CONTROL_KEYS}
        if job.open_stream is not None and (job.stream_wanted or body.get("STREAM") is True):
            job.stream = job.open_stream()

    def _refused(self, exc: PayloadTooLarge) -> None:
        """Say, at most every 10 s, how many bodies past the JSON bounds were refused."""
        self.bodies_refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 10:
            self._refused_logged = now
            logger.warning("Refused %d request bodies past the JSON bounds so far (the last: %s)", self.bodies_refused,
                           exc.message)

    def _deliver(self, conn: Connection, tag: int, job: Job) -> None:
        self.inflight.exit()
        if job.cancelled:
            conn.pending.pop(tag, None)  # the gateway gave up on it: nobody reads an answer
            return
        token = requestid.bind(job.request_id)
        try:
            if job.v2 is not None:
                self._deliver_v2(conn, tag, job)
                return
            if job.stream is None:
                status, body, headers = self.answer_of(job)
                conn.reply(tag, status, body, headers.get("Retry-After") if headers else None)
                return
            items, (status, body, flags) = self.stream_end(job)
            for item in items:
                conn.queue_item(tag, item)

            def last_frame() -> None:  # once the items kept for credit have gone: until then
                conn.pending.pop(tag, None)  # the job stays pending, to receive that credit
                conn.queue(reply_frame(tag, status, body, None, flags))

            job.stream.end(last_frame)
        finally:
            requestid.unbind(token)

    def _deliver_v2(self, conn: Connection, tag: int, job: Job) -> None:
        call, error = job.v2, job.error
        if error is None:
            try:
                parts, header_length = encode_response(call.model, call.version, call.request, job.result,
                                                       self.metadata.output_types)
            except ServingError as exc:
                error = exc
            except Exception as exc:  # an answer must leave whatever the outputs hold
                logger.exception("Call %d: encoding the V2 answer failed", job.call_id)
                error = ModelError(f"the outputs cannot be encoded: {type(exc).__name__}")
        if error is not None:
            logger.log(logging.ERROR if error.status >= 500 else logging.DEBUG, "Call %d: %s", job.call_id, error)
            conn.reply(tag, error.status, v2_error_body(error), _retry_after(error))
            return
        if header_length is None:
            conn.reply(tag, 200, parts[0])
        else:
            conn.reply_parts(tag, parts, BINARY, str(header_length))

    def stream_end(self, job: Job) -> tuple[list[bytes], tuple[int, bytes, int]]:
        """How a streamed request ends: the items still to send (a ``_predict`` that returned a
        plain value is one item), then the REPLY that ends the stream (status, body, flags)."""
        if job.error is not None:  # (never raised again: a raise would give it a traceback holding the job)
            return [], (job.error.status, jsonutil.dumps_bytes(job.error.to_body()), 0)
        items = []
        try:
            if not job.streamed:
                items.append(jsonutil.dumps_bytes(job.result))
                job.stream.count += 1
            body = jsonutil.dumps_bytes({"call_id": job.call_id, "signature": self.signature_of(job.worker_idx),
                                         "worker_id": f"{self.host_id}:{job.worker_idx}", "items": job.stream.count})
            return items, (200, body, STREAM)
        except (TypeError, ValueError) as exc:
            error = ModelError(f"result of _post_process is not JSON-serialisable: {exc}")
            return [], (error.status, jsonutil.dumps_bytes(error.to_body()), 0)

    def answer_of(self, job: Job) -> Answer:
        """The answer of a finished job: ``predict_result`` and where it ran, or its error (never
        raised again: a raise would give the kept error a traceback holding the job)."""
        if job.error is not None:
            return error_answer(job.error)
        answer = {
            "predict_result": job.result,
            "call_id": job.call_id,
            "signature": self.signature_of(job.worker_idx),
            "worker_id": f"{self.host_id}:{job.worker_idx}",
        }
        try:
            return 200, jsonutil.dumps_bytes(answer), None
        except (TypeError, ValueError) as exc:
            logger.error("Call %d: result of _post_process is not JSON-serialisable: %s", job.call_id, exc)
            return error_answer(ModelError(f"result of _post_process is not JSON-serialisable: {exc}"))

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


def error_answer(exc: ServingError) -> Answer:
    """The answer of an error: its status, its JSON body, its headers (Retry-After)."""
    return exc.status, jsonutil.dumps_bytes(exc.to_body()), exc.headers() or None


def _retry_after(exc: ServingError) -> str | None:
    return None if exc.retry_after is None else str(exc.retry_after)


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
