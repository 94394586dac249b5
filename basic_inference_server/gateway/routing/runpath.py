"""``POST /run`` in the HTTP front's event loop: route, admit, forward over the channel, answer.

Nothing here blocks or waits on a thread, and no body is parsed here: a request is routed by the
signature read from its body without parsing it (:meth:`.Router.signature_in`), admitted,
written to its model server's channel, and answered from the channel's callback. The model
server, which parses the body on the worker that runs it, answers MISROUTED with the body's own
SIGNATURE when it differs from the one the request was routed by, and the request is routed
again by that one, so reading without parsing never changes an answer. Every request is counted
in the metrics, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ... import jsonutil, requestid
from ...config import SYSTEM_STATUS
from ...errors import RequestTimeout, ServerDied, ServingError, Unavailable, UnknownSignature
from ...transport import streamformat
from ...transport.frames import STREAM
from ...transport.gather import Pieces
from ...transport.httpfront import HttpRequest, Responder
from ...transport.httpmsg import JSON
from ..apikeys import ApiKeys
from ..observe.metrics import NO_SIGNATURE, UNKNOWN_SIGNATURE, GatewayMetrics
from ..remote.client import NotRun, RemoteClient
from ..remote.handle import RemoteHandle
from ..supervision.handle import ChildHandle
from .channel import Cancel, ChannelClient
from .forward import transport_error
from .outcome import Failure, Misroute, Outcome, Reply
from .pipeline import PipelineRun
from .router import Router
from .upstream import ConnectFailed, ReadTimedOut

logger = logging.getLogger(__name__)

EXPIRE_INTERVAL = 0.1  # how often answers past their deadline are looked for
CLIENT_GONE = 499  # counted in the metrics for a request whose client left before its answer


class RunPath:
    def __init__(self, router: Router, metrics: GatewayMetrics, loop: asyncio.AbstractEventLoop, executor: Executor,
                 system_status: Callable[[], dict[str, Any]],
                 congested: Callable[[object, bool], None] | None = None, endpoint_token: str | None = None,
                 keys: ApiKeys | None = None):
        self.router = router
        self.metrics = metrics
        self.loop = loop
        self.executor = executor
        self.system_status = system_status
        self.congested = congested
        self.endpoint_token = endpoint_token  # BIS_ENDPOINT_TOKEN, sent to remote model servers
        self._channels: dict[str, ChannelClient | RemoteClient] = {}
        self.jobs: Callable[[HttpRequest, Responder], Any] | None = None  # POST /jobs: Prefer: respond-async goes there
        self.keys = keys or ApiKeys()  # BIS_API_KEYS_FILE (off without it)
        loop.call_soon_threadsafe(self._expire)

    def __call__(self, request: HttpRequest, respond: Responder) -> Any:
        if request.respond_async and self.jobs is not None:
            return self.jobs(request, respond)  # a job, answered 202 once durable
        call = Call(self, request, respond)
        call.route()
        return call

    def channel(self, handle: ChildHandle | RemoteHandle) -> ChannelClient | RemoteClient:
        """The client of ``handle``: the internal channel of a child, HTTP to a remote server."""
        key = handle.key
        channel = self._channels.get(key)
        if channel is None:
            self._forget_idle_channels()
            if handle.is_remote:
                channel = RemoteClient(self.loop, handle.host, handle.port, self.endpoint_token,
                                       congested=self.congested, tls=handle.tls, server_name=handle.server_name)
            else:
                channel = ChannelClient(self.loop, key, congested=self.congested)
            self._channels[key] = channel
        return channel

    def _forget_idle_channels(self) -> None:
        """Close the channels of servers that are no longer routed to (a generation replaced by a
        reload or a recycle) once nothing is in flight on them."""
        live = {h.key for replicas in self.router.table.routes.servers.values() for h in replicas}
        for path, channel in list(self._channels.items()):
            if path not in live and not channel.in_flight:
                channel.close()
                del self._channels[path]

    def _expire(self) -> None:
        now = time.monotonic()
        for channel in list(self._channels.values()):
            if channel.in_flight:
                channel.expire(now)
        self.loop.call_later(EXPIRE_INTERVAL, self._expire)


class Call:
    """One ``/run`` on its way through the gateway.

    A streamed answer (the client asked for one in ``Accept``, or in the body with ``"STREAM":
    true``) is relayed item by item as the model server sends them: the first item starts the
    HTTP answer, each item is written to the client as it arrives and acknowledged to the server
    once the client has taken it (at once, or when the client's socket drains), so a slow
    client holds back its own stream only.
    """

    FLAGS = 0  # the channel flags of its requests (OpenAI's API: OPENAI)
    STREAM_FORMAT = streamformat.SSE  # of a stream the model server begins unasked (the body's "STREAM": true)

    __slots__ = ("channel", "flat", "fmt", "grant", "handle", "items", "label", "owed", "path", "pipeline",
                 "request", "respond", "rerouted", "routed", "started", "step_started", "streaming", "tag", "tried")

    def __init__(self, path: RunPath, request: HttpRequest, respond: Responder):
        self.path = path
        self.request = request
        self.respond = respond
        self.started = time.perf_counter()
        self.label = NO_SIGNATURE
        self.handle: ChildHandle | None = None
        self.flat = False
        self.channel: ChannelClient | None = None
        self.tag: int | None = None  # while forwarded and not answered
        self.fmt = streamformat.from_accept(request.accept)  # the stream the client asked for, if any
        self.streaming = False  # the streamed answer has begun
        self.items = self.owed = 0  # items relayed; credits to give back when the client drains
        self.routed = ""  # the signature it is routed by (the model server checks the body names it)
        self.rerouted = False  # routed again by the SIGNATURE a model server read in the body
        self.tried: frozenset[RemoteHandle] | None = None  # remote addresses that did not take it
        self.pipeline: PipelineRun | None = None  # a pipeline's steps before its last
        self.step_started = 0.0  # a pipeline's last step: when it was sent
        self.grant: Any = None  # its API key, counted in flight until it is answered (BIS_API_KEYS_FILE)

    def route(self) -> None:
        """Route by the signature the body names (read without parsing it)."""
        token = requestid.bind(self.request.request_id)
        try:
            if self.path.router.admission.draining:
                raise Unavailable("gateway is shutting down", retry_after=5)
            self._go(self._signature())
        except ServingError as exc:
            self._fail(exc)
        finally:
            requestid.unbind(token)

    def _signature(self) -> str:
        """What it is routed by: the endpoint its body names."""
        return self.path.router.signature_in(self.request.body)

    def _go(self, signature: str) -> None:
        """Answer SYSTEM_STATUS here, or forward to a server of ``signature`` (it checks the body names it)."""
        self.label = signature
        self.admit(signature)
        if signature == SYSTEM_STATUS:
            future = self.path.loop.run_in_executor(self.path.executor, self.path.system_status)
            future.add_done_callback(self._status_done)
            return
        pipeline = self.path.router.table.pipelines.get(signature)
        if pipeline is not None:
            self.pipeline = PipelineRun(self, pipeline)
            self.pipeline.start()
            return
        self.routed = signature
        self._forward(self.path.router.route_to(signature))

    def _rerouted(self, body: bytes) -> None:
        """MISROUTED: the body's own SIGNATURE, as its model server parsed it, is another endpoint's."""
        if self.rerouted:
            raise ServerDied("model servers disagree on which endpoint the body names")
        try:
            signature = json.loads(body)["SIGNATURE"]
        except (ValueError, KeyError, TypeError):
            raise ServerDied("model server answered MISROUTED without the body's SIGNATURE") from None
        self.rerouted = True
        self._go(Router.signature_of({"SIGNATURE": signature}))

    def admit(self, signature: str) -> None:
        """Its API key, allowed ``signature`` and within its limits (401, 403, 429); nothing when
        keys are off."""
        keys = self.path.keys
        if not keys.on:
            return
        if self.grant is not None:  # routed again (MISROUTED): the key must allow this endpoint too
            keys.allow(self.grant, signature)
            return
        request = self.request
        self.grant = keys.admit(request.header(b"authorization"), request.header(b"x-api-key"), signature)

    def observe(self, status: int) -> None:
        """It has been answered (or its client left): counted, and its key's place freed."""
        self.path.metrics.observe(self.label, status, time.perf_counter() - self.started)
        if self.grant is not None:
            self.path.keys.done(self.grant)
            self.grant = None

    def forward_step(self, handle: ChildHandle, body: bytes, pipe: int, timeout: float) -> None:
        """A pipeline's last step: ``body`` (the value of the step before, PIPE_IN) forwarded as
        this request, within what is left of the pipeline's REQUEST_TIMEOUT."""
        self._forward(handle, body, pipe, timeout)

    def finish_pipeline(self, status: int, error: dict[str, Any], headers: dict[str, str] | None) -> None:
        """A pipeline failed (a step's error, its REQUEST_TIMEOUT): ``error`` names the step."""
        self.pipeline = None  # (it holds this call: no reference cycle is left for the collector)
        token = requestid.bind(self.request.request_id)
        try:
            self._finish(status, self.rendered(error), headers)
        finally:
            requestid.unbind(token)

    @staticmethod
    def rendered(error: dict[str, Any]) -> bytes:
        """A pipeline's error as this route answers it: the gateway's error JSON."""
        return jsonutil.dumps_bytes(error)

    def _forward(self, handle: ChildHandle | RemoteHandle, body: bytes | None = None, pipe: int = 0,
                 timeout: float | None = None) -> None:
        router = self.path.router
        router.admission.enter(handle)
        try:
            self.handle, self.flat = handle, router.is_flat(handle)
            self.channel = self.path.channel(handle)
        except BaseException:
            router.admission.exit(handle)
            raise
        endpoint = handle.endpoint
        if body is None:  # (else a pipeline's last step: the value before, within what is left of its time)
            body, timeout = self.request.body, endpoint.request_timeout
        self.tag = self.channel.send(self.request.request_id, "" if pipe else self.routed, body, timeout,
                                     self._replied, self._item,
                                     endpoint.stream_idle_timeout, endpoint.stream_timeout, self.fmt is not None,
                                     alone=router.admission.alone, pipe=pipe | self.FLAGS)

    def _elsewhere(self, handle: RemoteHandle, error: OSError) -> bool:
        """A remote model server was not reached (ConnectFailed), or refused the request without
        running it (NotRun): an address that could not be reached, or is shutting down, is taken
        out at once, and the request goes to another READY address not tried yet. True when it
        went; a request that may have run is never sent twice."""
        if not isinstance(error, (ConnectFailed, NotRun)):
            return False
        draining = isinstance(error, NotRun) and error.draining
        if draining or isinstance(error, ConnectFailed):  # a connection lost may be the gateway's doing
            handle.report(handle, str(error), draining)
        if self.streaming:
            return False
        self.tried = (self.tried or frozenset()) | {handle}
        other = self.path.router.other_address(handle.endpoint.name, self.tried)
        if other is None:
            return False
        self._forward(other)
        return True

    def cancel(self) -> None:
        """The client went away: stop waiting, and have the model server skip the request if it
        has not started it, or close its generator (so that a burst of abandoned requests does
        not hold the queue, and an abandoned stream frees its worker)."""
        pipeline, self.pipeline = self.pipeline, None  # (it holds this call: no cycle is left behind)
        if pipeline is not None and pipeline.cancel():  # its steps before the last were in flight
            self.observe(CLIENT_GONE)
            return
        if self.tag is None or self.channel is None:
            return
        if pipeline is not None:
            pipeline.release()
        cancelled = self.channel.cancel(self.tag)
        if cancelled is Cancel.NOT_WAITING:
            return
        self.tag = None
        self.path.router.admission.exit(self.handle)
        metrics = self.path.metrics
        if cancelled is Cancel.UNSENT:
            metrics.cancelled(self.label, "queued")  # never reached the model server
        logger.debug("Request %s cancelled: its client left", self.request.request_id)
        if self.streaming:
            metrics.stream_ended(self.label, self.items)
        self.observe(CLIENT_GONE)

    def resumed(self) -> None:
        """The client's socket has drained: the model server may send the items it was owed."""
        if self.owed and self.tag is not None:
            self.channel.grant(self.tag, self.owed)
            self.owed = 0

    def _item(self, body: bytes) -> None:
        self.items += 1
        self.handle.progress += 1  # the server is alive, however long its health takes to answer
        if self.streaming:
            taken = self.respond.chunk(self.fmt.item(body))
        else:
            taken = self._begin_stream(body)
        if taken:
            self.channel.grant(self.tag, 1)
        else:
            self.owed += 1

    def _begin_stream(self, first: bytes | None) -> bool:
        """The first item (None: a stream that ends without one) starts the HTTP answer."""
        self.streaming, self.fmt = True, self.fmt or self.STREAM_FORMAT
        self.path.metrics.stream_started(self.label, time.perf_counter() - self.started)
        return self.respond.start_stream(self.fmt.content_type, b"" if first is None else self.fmt.item(first))

    def _replied(self, outcome: Outcome) -> None:
        handle = self.handle
        self.tag = None
        pipeline, self.pipeline = self.pipeline, None  # (it holds this call: no cycle is left for the collector)
        if pipeline is not None:
            self.path.metrics.pipeline_step(self.label, self.routed, time.monotonic() - self.step_started)
            pipeline.release()  # the last step has read the values it took
        self.path.router.admission.exit(handle)
        handle.served += 1  # for MAX_REQUESTS (only this loop writes it)
        token = requestid.bind(self.request.request_id)
        try:
            if pipeline is not None and self._last_step_failed(pipeline, handle, outcome):
                return
            match outcome:
                case Misroute(body=body):
                    handle.progress += 1  # it answered: alive, however long its health takes to answer
                    self._rerouted(body)
                case Failure(error=error):
                    if not (handle.is_remote and self._elsewhere(handle, error)):
                        self._failed(error)
                case Reply():
                    handle.progress += 1
                    self._answer(outcome)
        except ServingError as exc:
            self._fail(exc)
        finally:
            requestid.unbind(token)

    def _last_step_failed(self, pipeline: PipelineRun, handle: ChildHandle, outcome: Outcome) -> bool:
        """A pipeline's last step answered an error (not within a stream begun): the client gets it
        naming the step, as from any other step. True when answered here."""
        match outcome:
            case Reply(status=status, body=body, meta=meta, flags=flags) if status != 200 and not (
                    self.streaming or flags & STREAM):
                handle.progress += 1
                headers = {"Retry-After": meta} if meta and status in (429, 503) else None
            case Failure(error=error) if not self.streaming:
                failure = transport_error(handle, error)
                status, body, headers = failure.status, jsonutil.dumps_bytes(failure.to_body()), failure.headers()
            case _:
                return False
        self.finish_pipeline(status, pipeline.error_of(self.routed, status, body), headers)
        return True

    def _answer(self, reply: Reply) -> None:
        """The client's answer for the model server's REPLY."""
        if self.streaming or reply.flags & STREAM:
            self._end_stream(reply)
        else:
            self._finish(*self.path.router.relay(reply.status, reply.body, reply.meta, self.flat))

    def _failed(self, error: OSError) -> None:
        """No answer from the model server (the channel's failure, or a remote server's refusal)."""
        if self.streaming:
            self._end_stream(Failure(error))
        elif isinstance(error, NotRun):  # no other server took it: the server's own answer
            self._finish(*self.path.router.relay(error.status, error.body, error.retry_after, self.flat))
        else:  # ConnectFailed, ReadTimedOut, ConnectionLost, SecretRefused
            raise transport_error(self.handle, error)

    def _end_stream(self, outcome: Reply | Failure) -> None:
        """What ends a streamed answer: its envelope, or the error that ended it."""
        if not self.streaming:  # a stream without items begins and ends here
            self._begin_stream(None)
        try:
            match outcome:
                case Failure(error=ReadTimedOut() as late):  # STREAM_IDLE_TIMEOUT or STREAM_TIMEOUT
                    raise RequestTimeout(str(late))
                case Failure(error=error):
                    raise transport_error(self.handle, error)
                case Reply(status=200, body=body):
                    last, status = self._stream_end(body), 200
                case Reply(status=status, body=body):
                    last = self.fmt.error(body)
                    logger.warning("Stream of %s ended by HTTP %s after %d item(s)", self.label, status, self.items)
        except ServingError as exc:
            status, last = exc.status, self.fmt.error(self.error_body(exc))
            logger.warning("Stream of %s ended after %d item(s): %s", self.label, self.items, exc)
        self.respond.end_stream(last)
        metrics = self.path.metrics
        metrics.stream_ended(self.label, self.items)
        self.observe(status)

    def _stream_end(self, envelope: bytes) -> bytes:
        """The last event of a stream, from the envelope its model server ended it with."""
        try:
            return self.fmt.end(self.path.router.envelope.wrap(envelope))
        except ValueError:
            raise ServerDied("model server ended a stream with an envelope that is not JSON") from None

    def _status_done(self, future: asyncio.Future) -> None:
        token = requestid.bind(self.request.request_id)
        try:
            status = self.path.router.envelope.add_to(future.result())
            self._finish(200, jsonutil.dumps_bytes(status), None)
        except Exception as exc:
            logger.exception("SYSTEM_STATUS failed")
            self._fail(ServingError(f"system status failed: {type(exc).__name__}"))
        finally:
            requestid.unbind(token)

    def _fail(self, exc: ServingError) -> None:
        if isinstance(exc, UnknownSignature):
            self.label = UNKNOWN_SIGNATURE  # one label for every name that is not an endpoint
        self._finish(exc.status, self.error_body(exc), exc.headers())

    @staticmethod
    def error_body(exc: ServingError) -> bytes:
        """An error as this route answers it: the gateway's error JSON."""
        return jsonutil.dumps_bytes(exc.to_body())

    def _finish(self, status: int, body: bytes | Pieces, headers: dict[str, str] | None,
                content_type: str = JSON) -> None:
        self.respond(status, body, list(headers.items()) if headers else None, content_type)
        self.observe(status)
