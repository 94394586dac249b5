"""Routing by ``SIGNATURE``: which model server answers a request, and how much may wait for it.

The router reads a :class:`Routes` snapshot (endpoint name -> its replicas, plus the configured
endpoints) that the supervisor replaces whenever its table changes; it never reaches into the
supervisor or the gateway. :class:`Admission` bounds what the whole gateway, and each endpoint,
holds in flight: past the bound a request gets 503 at once instead of waiting without limit.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec

from ... import jsonbody
from ...errors import BadRequest, Overloaded, ServerDied, SignatureDisabled, Unavailable, UnknownSignature
from ...httpserve import InFlight
from ...openaishape import InvalidParam
from ...transport.gather import Pieces
from ..remote.handle import RemoteHandle
from ..supervision.handle import FAILED, READY, RESTARTING, STARTING, ChildHandle
from .envelope import Envelope
from .routes import RouteTable

Handle = TypeVar("Handle", ChildHandle, RemoteHandle)
# `"SIGNATURE": "<name>"` as clients write it (a name with escapes is read exactly, in a small body).
_SIGNATURE_AT = re.compile(rb'"SIGNATURE"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.\-]{0,99})"')
_MODEL_AT = re.compile(rb'"model"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.\-]{0,99})"')  # OpenAI's API: the same
INLINE_SCAN = 65536  # bodies up to this size are read exactly when their first "SIGNATURE" routes nowhere


class _Envelope(msgspec.Struct):
    """The one member of a /run body the gateway reads: its other members are skipped, not built."""

    SIGNATURE: Any = None


class _OpenAIBody(msgspec.Struct):
    """The one member of a body of OpenAI's API the gateway reads."""

    model: Any = None


_read_envelope = msgspec.json.Decoder(_Envelope).decode
_read_openai_body = msgspec.json.Decoder(_OpenAIBody).decode


def _first_name(raw: bytes, key: bytes, at: re.Pattern[bytes]) -> str | None:
    """The name in the first ``"<key>": "<name>"`` written in ``raw`` (None: none as clients write it)."""
    start = raw.find(key)
    match = at.match(raw, start) if start >= 0 else None
    return match.group(1).decode("ascii") if match is not None else None


def _read_small(raw: bytes, decode: Callable[[bytes], Any]) -> Any:
    """A small body read by ``decode`` (one member, the others skipped); BadRequest saying why when
    the body is not a JSON object."""
    try:
        return decode(raw[3:] if raw[:3] == b"\xef\xbb\xbf" else raw)
    except (msgspec.MsgspecError, ValueError):
        jsonbody.loads_object(raw)  # raises the BadRequest that says what is wrong (the body is small)
        raise BadRequest("Malformed JSON body") from None


class Admission:
    """Bounds of the whole gateway: requests in flight to model servers, and shutting down."""

    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = InFlight()
        self.draining = False
        self.load = 0.0  # requests in flight as each was admitted, averaged over the last few (for alone)
        # told when a request leaves a server, while jobs wait (None otherwise: nothing to pay per request)
        self.freed: Callable[[ChildHandle | RemoteHandle], None] | None = None

    def enter(self, handle: ChildHandle) -> None:
        """Count one request for ``handle``, or raise Overloaded; pair with :meth:`exit`."""
        if not self.inflight.try_enter(self.limit):
            raise Overloaded(f"gateway busy: {self.limit} requests in flight; retry later")
        if not handle.inflight.try_enter(handle.capacity):
            self.inflight.exit()
            raise Overloaded(f"endpoint {handle.name!r} has {handle.capacity} requests in flight "
                             "(NR_WORKERS x MAX_BATCH_SIZE + MAX_QUEUE); retry later")
        self.load += (self.inflight.count - self.load) * 0.125

    @property
    def alone(self) -> bool:
        """The request just admitted is the only one in flight, and the last few were too: the
        clients ask one at a time (no burst's other requests will come to be written with it)."""
        return self.inflight.count == 1 and self.load < 1.5

    def exit(self, handle: ChildHandle) -> None:
        handle.inflight.exit()
        self.inflight.exit()
        if self.freed is not None:
            self.freed(handle)

    @contextmanager
    def forwarding(self, handle: ChildHandle) -> Iterator[None]:
        self.enter(handle)
        try:
            yield
        finally:
            self.exit(handle)


class Router:
    def __init__(self, table: RouteTable, envelope: Envelope, admission: Admission, response_format: str):
        self.table = table
        self.envelope = envelope
        self.admission = admission
        self.response_format = response_format
        self._turn = itertools.count()

    signature_of = staticmethod(jsonbody.signature_of)

    def signature_in(self, raw: bytes) -> str:
        """The endpoint a ``/run`` body names, read without parsing the body on the event loop.

        The first ``"SIGNATURE": "<name>"`` written in the body is taken when it names an endpoint
        served here: the model server checks it against the body it parses anyway, and answers
        MISROUTED with the body's own SIGNATURE when it differs (the first one written may sit in a
        nested object). Otherwise a body of up to INLINE_SCAN bytes is read exactly (its top-level
        SIGNATURE, by a scan that builds nothing else); a larger one is never parsed here, so its
        first ``"SIGNATURE"`` decides (an unknown name is a 404, none a 400). Raises BadRequest."""
        name = _first_name(raw, b'"SIGNATURE"', _SIGNATURE_AT)
        if name is not None and (name in self.table.routes.servers or name in self.table.pipelines
                                 or len(raw) > INLINE_SCAN):
            return name
        if len(raw) <= INLINE_SCAN:
            signature = _read_small(raw, _read_envelope).SIGNATURE
            return self.signature_of({} if signature is None else {"SIGNATURE": signature})
        raise BadRequest(f"SIGNATURE not found: a body of over {INLINE_SCAN // 1024} KB is routed by the "
                         "\"SIGNATURE\": \"<endpoint>\" written in it, and it has none")

    def model_in(self, raw: bytes) -> str:
        """The model a request of OpenAI's API names, read as :meth:`signature_in` reads a
        SIGNATURE (the model server checks it against the body it parses); BadRequest."""
        name = _first_name(raw, b'"model"', _MODEL_AT)
        if name is not None and (name in self.table.routes.servers or len(raw) > INLINE_SCAN):
            return name
        if len(raw) > INLINE_SCAN:
            raise BadRequest("'model' not found: a body of over 64 KB is routed by the \"model\": \"<name>\" "
                             "written in it, and it has none")
        model = _read_small(raw, _read_openai_body).model
        if not isinstance(model, str) or not model:
            raise InvalidParam("model", "'model' is required: the name of an endpoint (GET /v1/models lists them)")
        return model

    def route_to(self, signature: str) -> ChildHandle:
        """The READY replica of ``signature`` with the fewest requests in flight; a 404/503
        ServingError when there is none."""
        routes = self.table.routes
        replicas = routes.servers.get(signature, ())
        if len(replicas) > 1 or (replicas and replicas[0].is_remote):
            ready = [h for h in replicas if h.routable]
            if ready:
                return self.least_busy(ready)
            if replicas[0].is_remote:
                states = ", ".join(f"{h.address} {h.state}" + (f" ({h.error})" if h.error else "") for h in replicas)
                raise Unavailable(f"endpoint {signature!r}: no model server is READY ({states})", retry_after=2)
        if not replicas:
            endpoint = routes.endpoints.get(signature)
            if endpoint is None or endpoint.is_support:
                raise UnknownSignature(f"Bad signature {signature!r}. Available signatures/servers: "
                                       f"{sorted(routes.servers)}")
            if endpoint.is_remote and not endpoint.disabled:
                urls = ", ".join(endpoint.url_of(host, port) for host, port in endpoint.urls)
                raise Unavailable(f"endpoint {signature!r}: no address of {urls} found yet", retry_after=2)
            raise SignatureDisabled(f"endpoint {signature!r} is disabled in the configuration; "
                                    "an admin can start it with /start_server")
        handle = replicas[0]
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

    def other_address(self, signature: str, tried: frozenset[RemoteHandle]) -> RemoteHandle | None:
        """The READY address of remote endpoint ``signature`` with the fewest requests in flight,
        leaving out ``tried``."""
        ready = [h for h in self.table.routes.servers.get(signature, ()) if h.routable and h not in tried]
        return self.least_busy(ready) if ready else None

    def least_busy(self, handles: list[Handle]) -> Handle:
        """The one of ``handles`` (READY replicas or addresses of one endpoint) with the fewest
        requests in flight; ties go round in turn, so that a light load spreads too."""
        if len(handles) == 1:
            return handles[0]
        start = next(self._turn) % len(handles)
        return min(handles[start:] + handles[:start], key=lambda h: h.inflight.count)

    def is_flat(self, handle: ChildHandle) -> bool:
        return (handle.endpoint.response_format or self.response_format) == "flat"

    def relay(self, status: int, data: bytes, retry_after: str | None,
              flat: bool = False) -> tuple[int, bytes | Pieces, dict[str, str] | None]:
        """The gateway's answer for a model server's: the envelope on success (as pieces to write
        gathered, unless ``flat``), errors as they are."""
        if status == 200:
            try:
                return 200, self.envelope.wrap(data, True) if flat else self.envelope.pieces(data), None
            except ValueError:
                raise ServerDied("model server sent an answer that is not a JSON object") from None
        if not data.startswith(b"{"):
            raise ServerDied(f"model server answered HTTP {status} without a JSON body")
        return status, data, {"Retry-After": retry_after} if retry_after else None
