"""``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` (OpenAI's API) in the
HTTP front's event loop, beside ``/run``: routed by the body's ``model`` (an endpoint whose entry
has ``"OPENAI"`` of the route's kind), admitted, counted and timed like ``/run``, and forwarded
over the same channel, flagged OPENAI.

The gateway never parses the body: the model server reads it, checks it as OpenAI does, runs the
hooks and makes OpenAI's answer (:mod:`basic_inference_server.server.openaigen`), which is relayed
as it comes: the whole completion, or its chunks as SSE events, ended here with ``data: [DONE]``.
A client that leaves cancels the request, as on ``/run``. Every error is OpenAI's error object,
with its real status (:mod:`basic_inference_server.openaishape`).
"""

from __future__ import annotations

from ...errors import MethodNotAllowed, NotFound, ServingError, UnknownSignature
from ...openaishape import ROUTE_OF, error_body, wrong_route
from ...transport import streamformat
from ...transport.frames import OPENAI, STREAM
from ...transport.httpfront import HttpRequest, Responder
from .outcome import Reply
from .runpath import Call, RunPath

KIND_OF = {route.encode("latin-1"): kind for kind, route in ROUTE_OF.items()}


class OpenAIPath:
    """The HTTP front's handler, in its loop, of one route of OpenAI's API."""

    def __init__(self, run_path: RunPath, route: bytes):
        self.run_path = run_path
        self.route = route
        self.kind = KIND_OF[route]

    def __call__(self, request: HttpRequest, respond: Responder) -> Call:
        call = OpenAICall(self.run_path, request, respond, self.route, self.kind)
        call.route()
        return call


def loop_routes(run_path: RunPath) -> list[tuple[bytes, OpenAIPath]]:
    """The front's loop routes of OpenAI's API (``GET /v1/models`` is a Flask route)."""
    return [(route, OpenAIPath(run_path, route)) for route in KIND_OF]


class OpenAICall(Call):
    """One request of OpenAI's API on its way through the gateway."""

    FLAGS = OPENAI
    STREAM_FORMAT = streamformat.OPENAI_SSE

    __slots__ = ("kind", "route_path")

    def __init__(self, path: RunPath, request: HttpRequest, respond: Responder, route: bytes, kind: str):
        super().__init__(path, request, respond)
        self.fmt = None  # the body's "stream" decides, read by the model server
        self.route_path, self.kind = route, kind

    def _signature(self) -> str:
        """The model the body names, on the route's own path and method."""
        request, route = self.request, self.route_path
        if request.target.partition(b"?")[0] != route:
            raise NotFound(f"{request.method} {request.target.decode('latin-1')}: not a route of OpenAI's API "
                           "(POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models)")
        if request.method != "POST":
            raise MethodNotAllowed(f"{request.method} {route.decode('latin-1')}: this route takes POST", allow="POST")
        return self.path.router.model_in(request.body)

    def _go(self, signature: str) -> None:
        """Forward to a server of model ``signature`` when its endpoint serves this route (404 otherwise)."""
        self.label = signature
        router = self.path.router
        if signature not in router.table.routes.servers:  # (a pipeline is no model of OpenAI's API)
            raise UnknownSignature(f"The model {signature!r} does not exist: GET /v1/models lists the models")
        self.admit(signature)
        handle = router.route_to(signature)
        kind = handle.endpoint.openai
        if kind != self.kind:
            raise wrong_route(kind, signature, ROUTE_OF[self.kind])
        if handle.is_remote:
            raise ServingError(f"model {signature!r} is served by remote model servers (URLS), which take /run only",
                               status=501)
        self.routed = signature
        self._forward(handle)

    def _answer(self, reply: Reply) -> None:
        """The model server's answer is OpenAI's already: relayed as it came (no envelope)."""
        if self.streaming or reply.flags & STREAM:
            self._end_stream(reply)
        else:
            self._finish(reply.status, reply.body, {"Retry-After": reply.meta} if reply.meta else None)

    def _stream_end(self, envelope: bytes) -> bytes:
        return self.fmt.end(envelope)

    error_body = staticmethod(error_body)
