"""``POST /v2/models/{name}[/versions/{v}]/infer`` (the Open Inference Protocol) in the HTTP
front's event loop, beside ``/run``: routed by the model name in the path, admitted, counted and
timed like ``/run``, and forwarded over the same channel.

The gateway never parses the tensors: the body (JSON, or JSON then binary tensors with
``Inference-Header-Content-Length``) goes to the model server as it came, flagged V2 with its
JSON header length and the model version, and the model server's answer (JSON, or binary with
its header length) is relayed as it comes. A model's version is its endpoint's generation: 1,
then one more for each reload or recycle. Errors are the protocol's ``{"error": "<message>"}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ... import jsonutil, requestid
from ...errors import BadRequest, MethodNotAllowed, NotFound, ServingError, Unavailable, UnknownSignature
from ...pipeconfig import PipelineConfig
from ...transport.frames import BINARY
from ...transport.httpfront import HttpRequest, Responder
from ...transport.v2wire import BINARY_CONTENT_TYPE, HEADER_LENGTH
from ..supervision.handle import READY, ChildHandle
from .forward import transport_error
from .outcome import Reply
from .pipeline import PipelineRun
from .router import Router
from .runpath import Call, RunPath

V2_MODELS = "/v2/models/"
_HEADER_LENGTH = HEADER_LENGTH.lower().encode("latin-1")


def infer_target(path: str) -> tuple[str, str | None]:
    """``(model name, version or None)`` of an infer path; 405 for the model's other routes (they
    take GET), 404 for any other path."""
    parts = [unquote(part) for part in path[len(V2_MODELS):].split("/")]  # "%2F" stays inside its part
    if parts[-1] == "infer" and (len(parts) == 2 or (len(parts) == 4 and parts[1] == "versions")):
        return parts[0], (parts[2] if len(parts) == 4 else None)
    if parts[0] and (parts[1:] in ([], ["ready"]) or (len(parts) in (3, 4) and parts[1] == "versions"
                                                      and parts[3:] in ([], ["ready"]))):
        raise MethodNotAllowed(f"POST {path}: this route takes GET", allow="GET")
    raise NotFound(f"POST {path}: not a V2 route (POST /v2/models/<name>[/versions/<version>]/infer)")


def route_model(router: Router, name: str, version: str | None) -> ChildHandle:
    """The model server of model ``name``: at ``version``, when given, the least busy READY
    replica of that generation (replicas may be at different ones while they reload or recycle);
    404 or 503 when there is none."""
    try:
        handle = router.route_to(name)
    except UnknownSignature:
        raise UnknownSignature(f"unknown model {name!r}; the models are {sorted(router.table.routes.servers)}"
                               ) from None
    if version is None or version == str(handle.generation):
        return handle
    replicas = [h for h in router.table.routes.servers.get(name, ()) if h.routable and str(h.generation) == version]
    if not replicas:
        raise NotFound(f"model {name!r} has no version {version!r}: version(s) "
                       f"{', '.join(served_versions(router, name))} served")
    return router.least_busy(replicas)


def pipeline_version(pipeline: PipelineConfig, version: str | None) -> None:
    """A pipeline is a model of version 1 (NotFound for another)."""
    if version not in (None, "1"):
        raise NotFound(f"model {pipeline.name!r} (a pipeline) has no version {version!r}: version 1 served")


def served_versions(router: Router, name: str) -> list[str]:
    """The generations of the model's READY replicas, oldest first."""
    handles = router.table.routes.servers.get(name, ())
    return [str(g) for g in sorted({h.generation for h in handles if h.state == READY})]


class InferPath:
    """The HTTP front's handler, in its loop, of every POST under ``/v2/models/`` (``/run`` has
    its own: the front tells them apart, so that ``/run`` pays nothing for this one)."""

    def __init__(self, run_path: RunPath):
        self.run_path = run_path

    def __call__(self, request: HttpRequest, respond: Responder) -> Call:
        call = InferCall(self.run_path, request, respond)
        call.route()
        return call


class InferCall(Call):
    """One V2 infer request on its way through the gateway (never streamed)."""

    __slots__ = ()

    def __init__(self, path: RunPath, request: HttpRequest, respond: Responder):
        super().__init__(path, request, respond)
        self.fmt = None  # V2 answers are never streams, whatever the client accepts

    def route(self) -> None:
        router = self.path.router
        request = self.request
        token = requestid.bind(request.request_id)
        try:
            if router.admission.draining:
                raise Unavailable("gateway is shutting down", retry_after=5)
            name, version = infer_target(request.target.partition(b"?")[0].decode("latin-1"))
            self.label = name
            self.admit(name)
            pipeline = router.table.pipelines.get(name)
            if pipeline is not None:
                self._pipeline(pipeline, version)
                return
            handle = route_model(router, name, version)
            if handle.is_remote:
                raise ServingError(f"model {name!r} is served by remote model servers (URLS), which take /run "
                                   "only: V2 infer is not forwarded to them", status=501)
            _check_encoding(request)
            header_length = _header_length(request, len(request.body))
            router.admission.enter(handle)
            self.handle, self.channel = handle, self.path.channel(handle)
            self.tag = self.channel.send(request.request_id, name, request.body, handle.endpoint.request_timeout,
                                         self._replied, v2=(header_length, str(handle.generation)))
        except ServingError as exc:
            self._fail(exc)
        finally:
            requestid.unbind(token)

    def _pipeline(self, pipeline: PipelineConfig, version: str | None) -> None:
        """A pipeline as a V2 model (version 1): its first steps read the V2 request, its last
        step answers it."""
        pipeline_version(pipeline, version)
        _check_encoding(self.request)
        endpoints = self.path.router.table.routes.endpoints
        remote = [step for step in pipeline.order if (not pipeline.parents[step] or step == pipeline.last)
                  and getattr(endpoints.get(step), "is_remote", False)]
        if remote:  # (its first steps read the V2 request, its last answers it: remote servers take /run only)
            raise ServingError(f"pipeline {pipeline.name!r}: step {remote[0]!r} is served by remote model servers "
                               "(URLS), which take /run only: V2 infer is not forwarded to them", status=501)
        self.pipeline = PipelineRun(self, pipeline, (_header_length(self.request, len(self.request.body)), "1"))
        self.pipeline.start()

    def forward_step(self, handle: ChildHandle, body: bytes, pipe: int, timeout: float) -> None:
        """The pipeline's last step, answering the V2 request the first step read."""
        router = self.path.router
        router.admission.enter(handle)
        self.handle, self.channel = handle, self.path.channel(handle)
        self.tag = self.channel.send(self.request.request_id, self.label, body, timeout, self._replied,
                                     v2=(None, "1"), pipe=pipe)

    @staticmethod
    def rendered(error: dict[str, Any]) -> bytes:
        """A pipeline's error as the protocol's ``{"error": "<message>"}``, naming the step."""
        message = error["error"] if isinstance(error.get("error"), str) else error.get("ERROR", "failed")
        return jsonutil.dumps_bytes({"error": f"pipeline {error['PIPELINE']!r}: step {error['STEP']!r} answered "
                                              f"{error['STEP_STATUS']}: {message}"})

    def _answer(self, reply: Reply) -> None:
        """The model server's V2 answer as it came: JSON, or JSON then binary tensors (``meta``:
        the JSON's length), or its error (``meta``: a Retry-After)."""
        status, meta = reply.status, reply.meta
        if status == 200 and reply.flags & BINARY:
            self._finish(200, reply.body, {HEADER_LENGTH: meta or "0"}, BINARY_CONTENT_TYPE)
        else:
            self._finish(status, reply.body, {"Retry-After": meta} if meta and status != 200 else None)

    def _failed(self, error: OSError) -> None:
        raise transport_error(self.handle, error)  # ConnectFailed, ReadTimedOut or ConnectionLost

    @staticmethod
    def error_body(exc: ServingError) -> bytes:
        """The protocol's error object."""
        return jsonutil.dumps_bytes({"error": exc.message})


def _check_encoding(request: HttpRequest) -> None:
    encoding = request.header(b"content-encoding")
    if encoding not in (None, b"identity"):
        raise ServingError(f"Content-Encoding {encoding.decode('latin-1')} is not supported: send the body "
                           "uncompressed", status=415)


def _header_length(request: HttpRequest, body_length: int) -> int | None:
    raw = request.header(_HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit() or len(raw) > 12:
        raise BadRequest(f"{HEADER_LENGTH} must be a number of bytes, got {raw.decode('latin-1')!r}")
    length = int(raw)
    if not 0 < length <= body_length:
        raise BadRequest(f"{HEADER_LENGTH} is {length} but the body has {body_length} bytes")
    return length
