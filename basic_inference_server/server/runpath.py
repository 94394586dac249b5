"""``/run`` in a model server: one implementation for the internal channel and the HTTP port.

A request becomes a :class:`~.call.Call` holding its body, queued for the worker pool without
being read (:meth:`RunPath.call`, :meth:`RunPath.queue`). The worker that takes it reads the body
(:meth:`RunPath.accept`): parsed within the JSON limits, checked against the endpoint it was
routed to, its stream opened when the body asks for one. When the call ends, :meth:`RunPath.deliver`
makes its answer on that worker's thread and gives it to the call's :class:`Outlet`: the gateway's
channel connection (:class:`~.channel.ChannelOutlet`), or a connection of the HTTP port
(:mod:`.httpfast`), whatever the transport, the same answers.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Protocol

from .. import jsonbody, jsonutil, requestid
from ..errors import (
    BadRequest,
    Misrouted,
    ModelError,
    PayloadTooLarge,
    ServerDied,
    ServingError,
    ShuttingDown,
    body_too_large,
    error_body,
)
from ..openaishape import error_body as openai_error_body
from ..transport import pipedata
from ..transport.frames import JOB_FIELDS, PIPE_IN, PIPE_INLINE, PIPE_OUT
from ..transport.streamformat import sse_events
from ..transport.tuning import trimmer
from ..transport.v2codec import encode_response
from ..webutil import Answer
from . import openaireq
from .app import ServerState
from .call import Call, CallState, Streamed
from .channel import ChannelOutlet, ChannelRequest, Connection
from .openaigen import Generation
from .streamout import BATCH_BACKLOG, StreamOut
from .v2 import V2Call
from .v2 import accept as accept_v2
from .v2 import error_body as v2_error_body
from .worker import CONTROL_KEYS

JOB_KEYS = CONTROL_KEYS | JOB_FIELDS  # what a durable job's body holds that is no input

logger = logging.getLogger(__name__)

LARGE_BODY = 65536  # a body larger than this returns its memory to the system once read (tuning.Trimmer)


class Outlet(Protocol):
    """Where the answer of one call goes. A worker's thread calls these; none may block."""

    def whole(self, answer: Answer) -> None:
        """The whole answer: status, JSON body, extra headers."""

    def parts(self, parts: list[Any], header_length: int) -> None:
        """A V2 answer whose tensors follow its JSON header in binary."""

    def send_item(self, item: bytes) -> None:
        """Queue one item of a streamed answer (JSON)."""

    def push(self) -> None:
        """Write what was queued."""

    def end(self, status: int, body: bytes, plain: bool = False) -> None:
        """Queue the end of a stream that began: its envelope (200) or the error that ends it
        (``plain``: its one item was a ``_predict`` result that was not a generator)."""

    def dropped(self) -> None:
        """The call ended after its client left: nothing is answered."""

    def delivered(self) -> None:
        """The worker is done with the call (its answer, if any, has been given)."""


class RunPath:
    """The ``/run`` of one model server."""

    def __init__(self, state: ServerState):
        self.state = state
        state.pool.accept = self.accept  # a request's body is read by the worker that takes it

    # -- in: the thread that received the request ------------------------------------------------
    def call(self, outlet: Outlet, raw: bytes, request_id: str, routed: str, stream_wanted: bool = False,
             v2: V2Call | None = None, job: bool = False, pipe: int = 0, openai: bool = False) -> Call:
        """A call for one request, not queued yet (ShuttingDown while the server drains)."""
        state = self.state
        if state.draining:
            raise ShuttingDown()
        call = Call(next(state.call_ids), request_id, lambda call: self.deliver(call, outlet), raw=raw, routed=routed)
        call.job, call.pipe = job, pipe
        if openai:
            call.openai = True  # its Generation once its body is read
        if v2 is not None:
            call.v2 = v2
        else:
            call.stream_wanted = stream_wanted
            backlog = BATCH_BACKLOG if state.pool.max_batch_size > 1 else 0  # a batch keeps a few items per
            call.open_stream = lambda: StreamOut(outlet.send_item, outlet.push, backlog=backlog)  # slow client
        return call

    def queue(self, call: Call) -> None:
        """Queue a call for the workers (Unavailable: none ready; Overloaded: the queue is full)."""
        inflight = self.state.inflight
        inflight.enter()
        try:
            self.state.pool.enqueue(call)
        except BaseException:
            inflight.exit()
            call.on_done = call.open_stream = None  # never to end: the cycle through its callbacks is cut here
            raise

    def from_channel(self, conn: Connection, request: ChannelRequest) -> None:
        """A request from the gateway's channel (the channel's reader thread): queued, or answered
        at once when it cannot be (too large, draining, no worker ready, the queue full)."""
        token = requestid.bind(request.request_id)
        tag = request.tag
        try:
            if request.oversize:
                raise body_too_large(self.state.max_body_bytes, request.oversize)
            v2 = V2Call(request.routed, request.v2[1], request.v2[0]) if request.v2 is not None else None
            call = self.call(ChannelOutlet(conn, tag, self.state.inflight), request.body, request.request_id,
                             request.routed, request.stream, v2, request.job, request.pipe, request.openai)
            conn.pending[tag] = call  # before it is queued: a worker may end it at once
            try:
                self.queue(call)
            except BaseException:
                conn.pending.pop(tag, None)
                raise
        except ServingError as exc:
            body = (v2_error_body(exc) if request.v2 is not None else openai_error_body(exc) if request.openai
                    else jsonutil.dumps_bytes(exc.to_body()))
            conn.reply(tag, exc.status, body, None if exc.retry_after is None else str(exc.retry_after))
        except Exception as exc:
            logger.exception("Unhandled %s on a channel request", type(exc).__name__)
            body = error_body("InternalError", f"internal error: {type(exc).__name__}")
            conn.reply(tag, 500, jsonutil.dumps_bytes({"error": body["ERROR"]} if request.v2 is not None else body))
        finally:
            requestid.unbind(token)

    # -- on the worker that takes it ------------------------------------------------------------
    def accept(self, call: Call) -> None:
        """Read a call's body into its worker inputs: parsed within the JSON limits, checked to name
        the endpoint it was routed to (else Misrouted, with the SIGNATURE it names), its stream
        opened when the body asks for one (``"STREAM": true``). Raises the ServingError its client
        is answered."""
        state = self.state
        raw, call.raw = call.raw, None
        if call.pipe & PIPE_IN:  # the value the step before returned, as it returned it
            try:
                call.inputs, call.carried = pipedata.decode_with_context(raw)
                if call.v2 is not None:  # a V2 pipeline's last step: answers what the first step was asked
                    call.v2.request = call.carried
            except pipedata.MemfdGone as exc:
                raise ServerDied(str(exc)) from None
            except (ValueError, pickle.UnpicklingError, EOFError) as exc:
                raise BadRequest(f"the value from the pipeline's step before cannot be read: {exc}") from None
            if call.open_stream is not None and call.stream_wanted:
                call.stream = call.open_stream()
            return
        try:
            if call.v2 is not None:
                call.inputs, call.v2.request = accept_v2(state.metadata, raw, call.v2.header_length,
                                                         state.json_limits, state.shm_regions)
                return
            body = jsonbody.loads_object(raw, state.json_limits)
        except PayloadTooLarge as exc:
            state.refused(exc)
            raise
        finally:
            if len(raw) > LARGE_BODY:
                trimmer.freed(len(raw))  # its memory goes back to the system once it is gone
            del raw
        if call.openai:
            self._accept_openai(call, body)
            return
        if call.routed and body.get("SIGNATURE") != call.routed:
            signature = jsonbody.signature_of(body)
            raise Misrouted(f"the body names endpoint {signature!r}, not {call.routed!r}", signature=signature)
        dropped = JOB_KEYS if call.job else CONTROL_KEYS  # (a job's own fields are no inputs either)
        call.inputs = {k: v for k, v in body.items() if k not in dropped}
        if call.open_stream is not None and (call.stream_wanted or body.get("STREAM") is True) \
                and not call.pipe & PIPE_OUT:  # (a step before the last answers a value, never a stream)
            call.stream = call.open_stream()

    def _accept_openai(self, call: Call, body: dict[str, Any]) -> None:
        """A request of OpenAI's API: checked as OpenAI checks it; the hooks get its body as sent."""
        request = openaireq.accept(self.state.openai, call.routed, body)
        call.openai = Generation(request, call.request_id)
        call.inputs = body
        if request.stream and call.open_stream is not None:
            call.stream = call.open_stream()

    # -- out: the thread that ended it ------------------------------------------------------------
    def deliver(self, call: Call, outlet: Outlet) -> None:
        """Give the answer of an ended call to its outlet (whatever happens, one answer)."""
        token = requestid.bind(call.request_id)
        try:
            if call.state is CallState.DROPPED:
                outlet.dropped()
            elif call.pipe & PIPE_OUT and call.error is None:
                self._deliver_piped(call, outlet)
            elif call.v2 is not None:
                self._deliver_v2(call, outlet)
            elif call.openai is not None:
                self._deliver_openai(call, outlet)
            elif call.stream is None:
                outlet.whole(self.answer_of(call))
            else:
                self._deliver_stream(call, call.stream, outlet)
        except Exception as exc:
            logger.exception("Call %d: the answer cannot be made", call.call_id)
            outlet.whole(error_answer(ServingError(f"internal error: {type(exc).__name__}")))
        finally:
            requestid.unbind(token)
            outlet.delivered()

    def answer_of(self, call: Call) -> Answer:
        """The answer of a call that is not streamed: ``predict_result`` and where it ran, or its
        error (never raised again: a raise would give the kept error a traceback holding the call)."""
        if call.error is not None:
            return error_answer(call.error)
        answer = {"predict_result": call.result, "call_id": call.call_id,
                  "signature": self.state.signature_of(call.worker_idx),
                  "worker_id": f"{self.state.host_id}:{call.worker_idx}"}
        try:
            return 200, jsonutil.dumps_bytes(answer), None
        except (TypeError, ValueError) as exc:
            logger.error("Call %d: result of _post_process is not JSON-serialisable: %s", call.call_id, exc)
            return error_answer(ModelError(f"result of _post_process is not JSON-serialisable: {exc}"))

    def _deliver_piped(self, call: Call, outlet: Any) -> None:
        """A pipeline step's value for the next step: what ``_post_process`` returned, pickled with
        its arrays out of band (:mod:`..transport.pipedata`), never JSON."""
        try:
            carried = call.carried
            if carried is None and call.v2 is not None:  # a V2 pipeline's first step: what its answer must hold
                carried = call.v2.request.answering() if call.v2.request is not None else None
            shm_at = None if call.pipe & PIPE_INLINE else self.state.shm_threshold_bytes
            parts, fds = pipedata.encode(call.result, shm_at, carried)
        except Exception as exc:  # noqa: BLE001 - whatever pickle refuses
            logger.error("Call %d: result of _post_process cannot be passed to the next step: %s", call.call_id, exc)
            outlet.whole(error_answer(ModelError(f"result of _post_process cannot be passed to the pipeline's next "
                                                 f"step: {type(exc).__name__}: {exc}")))
            return
        outlet.piped(parts, fds)

    def _deliver_stream(self, call: Call, stream: StreamOut, outlet: Outlet) -> None:
        """A streamed call's end: the items still to send (a ``_predict`` that returned a plain value
        is one item), then the envelope; an error before any item is an ordinary error answer."""
        if call.error is not None and not stream.count:
            outlet.whole(error_answer(call.error))
            return
        if call.error is not None:
            status, body = call.error.status, jsonutil.dumps_bytes(call.error.to_body())
        else:
            try:
                plain = call.result is not Streamed
                if plain:
                    outlet.send_item(jsonutil.dumps_bytes(call.result))
                    stream.count += 1
                status, body = 200, jsonutil.dumps_bytes({
                    "call_id": call.call_id, "signature": self.state.signature_of(call.worker_idx),
                    "worker_id": f"{self.state.host_id}:{call.worker_idx}", "items": stream.count})
            except (TypeError, ValueError) as exc:
                error = ModelError(f"result of _post_process is not JSON-serialisable: {exc}")
                if not stream.count:
                    outlet.whole(error_answer(error))
                    return
                status, body = error.status, jsonutil.dumps_bytes(error.to_body())
        plain = call.error is None and call.result is not Streamed
        stream.end(lambda: outlet.end(status, body, plain))  # once the items kept for credit have gone

    def _deliver_openai(self, call: Call, outlet: Outlet) -> None:
        """OpenAI's answer: the whole completion or embeddings, or a stream's last chunks (the pieces
        went out as they came), or its error in OpenAI's shape."""
        generation, error, stream = call.openai, call.error, call.stream
        chunks: list[bytes] = []
        if error is None:
            try:
                if generation.request.kind == "embeddings":
                    outlet.whole((200, generation.embeddings(call.result), None))
                    return
                if call.result is not Streamed and call.result is not None:
                    chunks = generation.take_plain(call.result)
                if stream is None:
                    outlet.whole((200, generation.whole(), None))
                    return
                chunks += generation.closing()
            except ServingError as exc:
                error = exc
        if error is not None:  # (a Misrouted goes to the gateway as it is: it routes the request again)
            body = jsonutil.dumps_bytes(error.to_body()) if isinstance(error, Misrouted) else openai_error_body(error)
            if stream is None or not stream.count:
                outlet.whole((error.status, body, error.headers() or None))
            else:
                stream.end(lambda: outlet.end(error.status, body))
            return
        events = sse_events(chunks)  # the stream's last events, in its end (no frame of their own)
        stream.end(lambda: outlet.end(200, events))

    def _deliver_v2(self, call: Call, outlet: Outlet) -> None:
        v2, error = call.v2, call.error
        if error is None:
            try:
                parts, header_length = encode_response(v2.model, v2.version, v2.request, call.result,
                                                       self.state.metadata.output_types, self.state.shm_regions)
            except ServingError as exc:
                error = exc
            except Exception as exc:  # an answer must leave whatever the outputs hold
                logger.exception("Call %d: encoding the V2 answer failed", call.call_id)
                error = ModelError(f"the outputs cannot be encoded: {type(exc).__name__}")
        if error is not None:
            logger.log(logging.ERROR if error.status >= 500 else logging.DEBUG, "Call %d: %s", call.call_id, error)
            outlet.whole((error.status, v2_error_body(error), error.headers() or None))
        elif header_length is None:
            outlet.whole((200, parts[0], None))
        else:
            outlet.parts(parts, header_length)


def error_answer(exc: ServingError) -> Answer:
    """The answer of an error: its status, its JSON body, its headers (Retry-After)."""
    return exc.status, jsonutil.dumps_bytes(exc.to_body()), exc.headers() or None

