"""The ``/run`` hot path: find the server of a ``SIGNATURE``, bound the load, forward, wrap.

:class:`Router` holds the logic shared by the Flask routes and the plain WSGI front
(:class:`~basic_inference_server.webutil.PostFront`) that answers ``POST /run`` without Flask.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import jsonutil, requestid
from ..errors import (
    BadRequest,
    Overloaded,
    ServerDied,
    ServingError,
    SignatureDisabled,
    Unavailable,
    UnknownSignature,
)
from ..webutil import Answer
from .forward import Reply, forward
from .metrics import NO_SIGNATURE, UNKNOWN_SIGNATURE
from .supervisor import FAILED, READY, RESTARTING, STARTING, ChildHandle

if TYPE_CHECKING:
    from .core import FlaskGateway

logger = logging.getLogger(__name__)

SYSTEM_STATUS = "SYSTEM_STATUS"


class Router:
    def __init__(self, gw: FlaskGateway):
        self.gw = gw

    @staticmethod
    def signature_of(payload: dict[str, Any]) -> str:
        signature = payload.get("SIGNATURE")
        if signature is None:
            raise BadRequest("Bad input. SIGNATURE not found: send {\"SIGNATURE\": \"<endpoint>\", ...}")
        if not isinstance(signature, str):
            raise BadRequest(f"SIGNATURE must be a string, got {type(signature).__name__}")
        return signature

    def route_to(self, signature: str) -> ChildHandle:
        """The READY replica of ``signature`` with the fewest requests in flight; a 404/503
        ServingError when there is none."""
        supervisor = self.gw.supervisor
        replicas = supervisor.replicas_of(signature)
        if len(replicas) > 1:
            ready = [h for h in replicas if h.state == READY and not h.health_failures]
            if ready:
                return min(ready, key=lambda h: h.inflight.count)
        handle = replicas[0] if replicas else None
        if handle is None:
            endpoint = self.gw.config.endpoint(signature)
            if endpoint is None or endpoint.is_support:
                available = sorted(h.name for h in supervisor.servers())
                raise UnknownSignature(f"Bad signature {signature!r}. Available signatures/servers: {available}")
            raise SignatureDisabled(f"endpoint {signature!r} is disabled in the configuration; "
                                    "an admin can start it with /start_server")
        if handle.is_support:
            raise UnknownSignature(f"{signature!r} is a support process, not a model endpoint")
        state = handle.state
        if state == READY:
            if handle.health_failures:
                raise Unavailable(f"endpoint {signature!r} is not healthy: {handle.error}", retry_after=2)
            return handle
        if state == STARTING:
            raise Unavailable(f"endpoint {signature!r} is starting", retry_after=2)
        if state == RESTARTING:
            wait = max(1, math.ceil(handle.restart_at - time.monotonic()) + 1)
            raise Unavailable(f"endpoint {signature!r} is restarting after: {handle.error}", retry_after=wait)
        if state == FAILED:
            raise Unavailable(f"endpoint {signature!r} failed: {handle.error}", retry_after=30)
        raise Unavailable(f"endpoint {signature!r} is {state}", retry_after=5)

    @contextmanager
    def forwarding(self, handle: ChildHandle) -> Iterator[None]:
        """Bound what one endpoint, and all of them together, may hold of the gateway's threads:
        past the bound a request gets 503 at once instead of waiting without limit, and threads
        stay free for /health, /ready and the admin routes."""
        gw = self.gw
        if not gw.inflight.try_enter(gw.forward_limit):
            raise Overloaded(f"gateway busy: {gw.forward_limit} requests in flight; retry later")
        try:
            if not handle.inflight.try_enter(handle.capacity):
                raise Overloaded(f"endpoint {handle.name!r} has {handle.capacity} requests in flight "
                                 "(workers + MAX_QUEUE); retry later")
            try:
                yield
            finally:
                handle.inflight.exit()
        finally:
            gw.inflight.exit()

    def relay(self, reply: Reply, flat: bool = False) -> Answer:
        """The gateway's answer for a model server's reply: the envelope on success, errors as they are."""
        if reply.status == 200:
            try:
                return 200, self.gw.envelope.wrap(reply.data, flat), None
            except ValueError:
                raise ServerDied("model server sent an answer that is not a JSON object") from None
        if not reply.data.startswith(b"{"):
            raise ServerDied(f"model server answered HTTP {reply.status} without a JSON body")
        return reply.status, reply.data, {"Retry-After": reply.retry_after} if reply.retry_after else None

    def run(self, raw: bytes) -> Answer:
        """``POST /run`` with body ``raw``; counted in the metrics whatever its outcome."""
        gw = self.gw
        started = time.perf_counter()
        label, status = NO_SIGNATURE, 500
        try:
            if gw.draining:
                raise Unavailable("gateway is shutting down", retry_after=5)
            label = signature = self.signature_of(jsonutil.loads_for_routing(raw))
            answer = self._answer(signature, raw)
            status = answer[0]
            return answer
        except ServingError as exc:
            status = exc.status
            if isinstance(exc, UnknownSignature):
                label = UNKNOWN_SIGNATURE  # one label for every name that is not an endpoint
            raise
        finally:
            gw.metrics.observe(label, status, time.perf_counter() - started)

    def _answer(self, signature: str, raw: bytes) -> Answer:
        gw = self.gw
        if signature == SYSTEM_STATUS:
            return 200, jsonutil.dumps_bytes(gw.envelope.add_to(gw.system_status())), None
        handle = self.route_to(signature)
        flat = (handle.endpoint.response_format or gw.config.response_format) == "flat"
        headers = {"Content-Type": "application/json", requestid.HEADER: requestid.current()}
        with self.forwarding(handle):
            reply = forward(handle, gw.execution_path, raw, headers)
        return self.relay(reply, flat)
