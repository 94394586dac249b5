"""Running one worker's hooks on calls, on the worker's own thread (:class:`Hooks`).

Per call: ``_pre_process(inputs)`` -> ``_predict(prep)`` -> ``_post_process(pred)``; with batching
(``MAX_BATCH_SIZE`` > 1), ``_pre_process`` per call, ``_predict`` once on the list, then
``_post_process`` per call. What user code raises becomes the error its client is answered: in
``_pre_process`` a 400 with its message, elsewhere a 500 naming the type, the hook and (with
batching) what batching asks of ``_predict``; an :class:`~basic_inference_server.InputError` keeps
its own status. A ``_predict`` that returns an iterator is streamed (:mod:`.streams`). A stage
returning ``None`` skips the later ones. :class:`~.worker.FlaskWorker` holds the user's hooks
only; everything here is the framework's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from .. import requestid
from ..errors import InputError, InvalidInput, ModelError, ServingError
from .call import Call
from .current import SERVING
from .streams import close_stream, is_stream, relay, relay_batch
from .worker import FlaskWorker

logger = logging.getLogger(__name__)

STREAM_OVER_V2 = ("this endpoint streams (its _predict returns a generator), and the Open Inference Protocol "
                  "has no streamed answers here: call POST /run, with Accept: text/event-stream for the items as "
                  "they come, or without it for the list of them")


def _ignore(call: Call) -> None:
    """A warmup call's answer: nobody reads it."""


class Hooks:
    """The hooks of one worker, run on calls with the framework's rules."""

    def __init__(self, worker: FlaskWorker, max_batch_size: int = 1, ended: Callable[[Call], Any] = Call.finish):
        self.worker = worker
        self.max_batch_size = max_batch_size
        self.ended = ended  # ends a call of a streaming batch before the others (its answer goes out)
        self._batch_note = (f" (batching is on, MAX_BATCH_SIZE={max_batch_size}: _predict receives a list of "
                            "the prepared inputs, one per request, and must return one prediction per input, in "
                            "the same order; see the batching guide)") if max_batch_size > 1 else ""

    # -- one call ------------------------------------------------------------------------------
    def run(self, call: Call) -> None:
        """Run one call's hooks: its ``result``, or its ``error``."""
        try:
            call.result = self._run(call)
        except ServingError as exc:
            call.error = exc
        finally:
            if call.pipe:  # a pipeline value's arrays view shared memory: get_last_query does not keep them
                SERVING.inputs = None

    def _run(self, call: Call) -> Any:
        worker = self.worker
        prep = self._pre(call)
        if prep is None:
            return None
        pred = self.stage("_predict", worker._predict, prep)
        if pred is None:
            return None
        if is_stream(pred):
            if call.v2 is not None:
                close_stream(pred)
                raise ModelError(STREAM_OVER_V2)
            return relay(self.stage, worker._post_process, pred, call)
        return self.stage("_post_process", worker._post_process, pred)

    def _pre(self, call: Call) -> Any:
        SERVING.call_id, SERVING.inputs = call.call_id, call.inputs
        try:
            return self.worker._pre_process(call.inputs)
        except ServingError:
            raise
        except Exception as exc:
            self._note("_pre_process", exc)
            raise InvalidInput(str(exc) or type(exc).__name__) from exc

    # -- a batch -------------------------------------------------------------------------------
    def run_batch(self, calls: list[Call]) -> None:
        """Run a batch: ``_pre_process`` per call, ``_predict`` once on the list of prepared inputs
        (one prediction per input, in order), ``_post_process`` per call. Each call gets its
        ``result`` or ``error``; a failure of ``_predict`` fails every call of the batch."""
        try:
            self._run_batch(calls)
        finally:
            if any(call.pipe for call in calls):  # (see run)
                SERVING.inputs = None

    def _run_batch(self, calls: list[Call]) -> None:
        prepared = []
        for call in calls:
            token = requestid.bind(call.request_id)
            try:
                prep = self._pre(call)
            except ServingError as exc:
                call.error = exc  # this call only
                continue
            finally:
                requestid.unbind(token)
            if prep is None:
                call.result = None
            else:
                prepared.append((call, prep))
        if not prepared:
            return
        batch = [call for call, _ in prepared]
        SERVING.call_id = batch[0].call_id
        try:
            preds = self.stage("_predict", self.worker._predict, [prep for _, prep in prepared], self._batch_note)
            if is_stream(preds):
                for call in batch:
                    if call.v2 is not None:
                        call.error = ModelError(STREAM_OVER_V2)
                relay_batch(self._batch_stage, self.worker._post_process, preds, batch, self.ended)
                return
            if not hasattr(preds, "__len__") or len(preds) != len(prepared):
                got = len(preds) if hasattr(preds, "__len__") else type(preds).__name__
                raise ModelError(f"_predict must return {len(prepared)} predictions for a batch of "
                                 f"{len(prepared)}, got {got}{self._batch_note}")
        except ServingError as exc:
            for call in batch:
                call.error = exc  # _predict sees the whole batch: its failure fails every call
            return
        for call, pred in zip(batch, list(preds), strict=False):
            SERVING.call_id = call.call_id
            token = requestid.bind(call.request_id)
            try:
                call.result = None if pred is None else self.stage("_post_process", self.worker._post_process, pred)
            except ServingError as exc:
                call.error = exc
            finally:
                requestid.unbind(token)

    def _batch_stage(self, name: str, hook: Callable[[Any], Any], value: Any) -> Any:
        return self.stage(name, hook, value, self._batch_note if name == "_predict" else "")

    # -- warmup ----------------------------------------------------------------------------------
    def warm(self, bodies: list[dict[str, Any]]) -> None:
        """Run WARMUP_INPUTS through the hooks (in batches when the endpoint batches); the first
        failure raises RuntimeError naming the input."""
        size = self.max_batch_size
        for start in range(0, len(bodies), size):
            chunk = bodies[start:start + size]
            calls = [Call(0, requestid.NONE, _ignore, inputs=copy.deepcopy(body)) for body in chunk]
            if size > 1:
                self.run_batch(calls)
            else:
                self.run(calls[0])
            for number, call in enumerate(calls, start):
                if call.error is not None:
                    raise RuntimeError(f"WARMUP_INPUTS[{number}] failed: {call.error.message}")

    # -- one stage ---------------------------------------------------------------------------------
    def stage(self, name: str, hook: Callable[[Any], Any], value: Any, note: str = "") -> Any:
        """``hook(value)``, what it raises turned into the error its client is answered."""
        try:
            return hook(value)
        except InputError:
            raise
        except Exception as exc:
            logger.exception("%s %s raised in %s", self.worker.prefix_log, type(exc).__name__, name)
            self._note(name, exc)
            raise ModelError(f"{type(exc).__name__} in {name}: {exc}{note}") from exc

    def _note(self, stage: str, exc: Exception) -> None:
        self.worker._create_notification(notif="exception", msg=f"Exception in {stage}: {type(exc).__name__}: {exc}")
