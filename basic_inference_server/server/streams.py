"""Streamed answers inside a model server: a ``_predict`` that returns a generator.

A worker whose ``_predict`` returns an iterator is driven here, on the worker's thread: each
item goes through ``_post_process`` and then either to the call's
:class:`~.streamout.StreamOut` (the client asked for a stream) or into a list (it did not: the
items are answered as one ``predict_result``). Between two items the worker looks whether the
client has left; if it has, the generator is closed (the user's code sees ``GeneratorExit`` at
its ``yield``) and the worker is free for the next request.

The hooks are run through ``stage(hook name, function, value)`` (:meth:`.hooks.Hooks.stage`),
which turns what user code raises into the error its client is answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from .. import jsonutil, requestid
from ..errors import ModelError, ServingError
from .call import Call, Streamed
from .current import SERVING

logger = logging.getLogger(__name__)

Stage = Callable[[str, Callable[[Any], Any], Any], Any]
_DONE = object()


class END_OF_STREAM:  # noqa: N801 - a marker, used as a value like None
    """Yield this as a request's item, in a batch's step, to end that request's stream."""

    def __init__(self) -> None:
        raise TypeError("END_OF_STREAM is a marker: use the class itself")


def is_stream(pred: Any) -> bool:
    """A ``_predict`` result that is streamed: a generator or any other iterator (not a list,
    tuple, dict, string or array, which are iterables but not iterators)."""
    return isinstance(pred, Iterator)


def relay(stage: Stage, post: Callable[[Any], Any], items: Iterator[Any], call: Call) -> Any:
    """Drive one request's generator: ``post`` (its ``_post_process``) each item, then stream it
    (the call has a stream) or collect it. Returns the call's result: the list collected, or
    :class:`~.call.Streamed`."""
    out, openai = call.stream, call.openai
    collected: list[Any] = []
    try:
        while not call.left:
            item = _next(stage, items)
            if item is _DONE or item is END_OF_STREAM:
                break
            if item is None:
                continue  # nothing at this step
            result = stage("_post_process", post, item)
            if openai is not None:
                if not openai.feed(result, out):
                    break  # its text is over (max_tokens, stop), or its client left
            elif out is None:
                collected.append(result)
            elif not out.put(_encode(result)):
                break  # its client left
    finally:
        close_stream(items)
    return collected if out is None and openai is None else Streamed


def relay_batch(stage: Stage, post: Callable[[Any], Any], steps: Iterator[Any], calls: list[Call],
                ended: Callable[[Call], Any]) -> None:
    """Drive a batch's generator: each step is a list with one item per request of the batch
    (``None``: nothing this step; ``END_OF_STREAM``: that request's stream ends). A request that
    ends, fails or whose client leaves is ended at once (``ended(call)``); the worker's
    ``cancelled_slots`` tells the generator which positions are no longer wanted. The generator is
    closed when no request of the batch is left, or when it ends."""
    live = {slot: call for slot, call in enumerate(calls) if call.error is None}  # (one refused: not in it)
    collected: dict[int, list[Any]] = {i: [] for i, call in live.items() if call.stream is None}
    cancelled = SERVING.cancelled_slots = set(range(len(calls))) - set(live)
    try:
        while live:
            for slot, call in list(live.items()):
                if call.left:
                    cancelled.add(slot)
                    ended(live.pop(slot))
            if not live:
                break
            step = _next(stage, steps)
            if step is _DONE:
                break
            if not hasattr(step, "__len__") or len(step) != len(calls):
                got = len(step) if hasattr(step, "__len__") else type(step).__name__
                raise ModelError(f"a streaming batch's _predict must yield a list of {len(calls)} items "
                                 f"(one per request), got {got}")
            for slot, item in enumerate(step):
                call = live.get(slot)
                if call is None or item is None:
                    continue
                if item is END_OF_STREAM:
                    _end(call, collected.get(slot))
                    ended(live.pop(slot))
                    continue
                _batch_item(stage, post, live, slot, item, collected, ended)
    except ServingError as exc:
        for call in live.values():
            call.error = exc  # the batch's generator failed: every request still in it fails
        live.clear()
    finally:
        close_stream(steps)
        SERVING.cancelled_slots = set()
    for slot, call in live.items():
        _end(call, collected.get(slot))


def _batch_item(stage: Stage, post: Callable[[Any], Any], live: dict[int, Call], slot: int, item: Any,
                collected: dict[int, list[Any]], ended: Callable[[Call], Any]) -> None:
    call = live[slot]
    SERVING.call_id = call.call_id
    token = requestid.bind(call.request_id)
    try:
        result = stage("_post_process", post, item)
        if call.openai is not None:
            if not call.openai.feed(result, call.stream):  # its text is over, or its client left
                SERVING.cancelled_slots.add(slot)
                _end(call, None)
                ended(live.pop(slot))
        elif call.stream is None:
            collected[slot].append(result)
        elif not call.stream.put(_encode(result)):
            SERVING.cancelled_slots.add(slot)  # its client left
            ended(live.pop(slot))
    except ServingError as exc:
        call.error = exc  # this request only
        ended(live.pop(slot))
    finally:
        requestid.unbind(token)


def _end(call: Call, collected: list[Any] | None) -> None:
    call.result = collected if call.stream is None and call.openai is None else Streamed


def _next(stage: Stage, items: Iterator[Any]) -> Any:
    """The generator's next item (``_DONE`` at its end); what it raises is a failure of ``_predict``."""
    return stage("_predict", lambda it: next(it, _DONE), items)


def _encode(result: Any) -> bytes:
    try:
        return jsonutil.dumps_bytes(result)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"an item of _post_process is not JSON-serialisable: {exc}") from None


def close_stream(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is None:
        return
    try:
        close()  # GeneratorExit at the generator's yield
    except Exception:
        logger.exception("Closing the stream's generator raised")
