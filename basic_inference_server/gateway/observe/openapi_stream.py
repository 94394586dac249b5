"""The streamed answers of ``POST /run`` in the gateway's OpenAPI description (:mod:`.openapi`).

The framing is the one of :mod:`basic_inference_server.transport.streamformat`. OpenAPI 3.0 has
no schema for a stream: NDJSON is a string whose description gives its framing; the
``text/event-stream`` schema is the one of each event as an SSE reader parses it (``event``,
``data``), as OpenAPI 3.2's ``itemSchema`` has it and as schemathesis checks an answer of a 3.0
document (a plain string schema fails every event). The JSON carried by the end and error events
has a schema of its own: ``StreamEnd`` and ``Error``.
``Accept`` is not a parameter here: OpenAPI ignores a header parameter of that name, and the
media types of the 200 answer are what a client chooses from with it.
"""

from __future__ import annotations

from typing import Any

from ... import jsonutil
from ...transport.streamformat import NDJSON, NDJSON_TYPE, SSE, SSE_TYPE, StreamFormat

RUN_STREAMING = (
    "A model whose _predict returns a generator streams its items to a client that asks with "
    f"`Accept: {SSE_TYPE}` (Server-Sent Events) or `Accept: {NDJSON_TYPE}` (the first of the two "
    "the header names, unless with q=0), or with `\"STREAM\": true` in the body (Server-Sent Events). "
    "A model that returns a plain value then streams that one item; SYSTEM_STATUS always answers "
    "JSON. An error before the first item is the ordinary JSON error with its status. A client that "
    "asks for neither gets a generator's items collected: predict_result is their list. A client "
    "that closes the connection stops the model's generator.")

_AFTER_FIRST = ("the HTTP status stays 200 (it was sent with the first item), e.g. a model error, or "
                "STREAM_IDLE_TIMEOUT or STREAM_TIMEOUT run out")
SSE_FRAMING = (
    "Server-Sent Events; this schema is one event's, as an SSE reader parses it. Each item is "
    "`data: <item JSON>` and a blank line (event `message`), in the order the model yields them. "
    "The last event is `event: end` with `data: <JSON>` (#/components/schemas/StreamEnd), "
    "or, when the stream fails after its first item, `event: error` with `data: <JSON>` "
    f"(#/components/schemas/Error): {_AFTER_FIRST}.")
NDJSON_FRAMING = (
    "Newline-delimited JSON, one compact JSON value a line. Each item is `<item JSON>`, in the order "
    "the model yields them. The last line is `{\"END\": <JSON>}` (#/components/schemas/StreamEnd), "
    "or, when the stream fails after its first item, `<JSON>` with the key ERROR "
    f"(#/components/schemas/Error): {_AFTER_FIRST}.")

STREAM_FLAG: dict[str, Any] = {
    "type": "boolean", "default": False,
    "description": f"true: stream the answer as Server-Sent Events, as `Accept: {SSE_TYPE}` does",
}

_END_EXAMPLE = {"call_id": 7, "signature": "gw.stream_model.StreamModelWorker.0", "worker_id": "gw:0", "items": 2,
                "time": "2026-01-01 12:00:00", "ver": "0.1", "ver-app": "0.1", "ver-lib": "1.0.0",
                "gw-uptime": "0:05:00", "hostname": "host"}


def stream_end_schema(envelope: dict[str, str]) -> dict[str, Any]:
    """The JSON that ends a streamed answer: the envelope (a ``$ref``) and where the stream ran."""
    return {"allOf": [envelope, {
        "type": "object",
        "properties": {
            "call_id": {"type": "integer", "description": "counts the calls of that model server"},
            "signature": {"type": "string", "description": "<gateway id>.<SERVER_CLASS>.<worker class>.<worker index>"},
            "worker_id": {"type": "string", "description": "<gateway id>:<worker index>"},
            "items": {"type": "integer", "minimum": 0, "description": "the items the stream carried"},
        },
        "required": ["call_id", "signature", "worker_id", "items"],
    }]}


def _sse_event() -> dict[str, Any]:
    """One event; a whole answer, as sent, is in the description (an ``example`` would be one event)."""
    description = f"{SSE_FRAMING} For example:\n\n```\n{_example(SSE)}```"
    return {"type": "object", "description": description, "properties": {
        "event": {"type": "string", "enum": ["message", "end", "error"],
                  "description": "message (the default, not written) for an item, end or error for the last event"},
        "data": {"type": "string", "description": "compact JSON: the item, the StreamEnd or the Error"},
    }, "required": ["data"]}


def stream_content() -> dict[str, Any]:
    """The streamed media types of ``/run``'s 200 answer, beside its ``application/json``."""
    return {
        SSE_TYPE: {"schema": _sse_event()},
        NDJSON_TYPE: {"schema": {"type": "string", "description": NDJSON_FRAMING}, "example": _example(NDJSON)},
    }


def _example(fmt: StreamFormat) -> str:
    """Two items and the end, written by the gateway's own framing."""
    items = [fmt.item(jsonutil.dumps_bytes({"i": index})) for index in range(_END_EXAMPLE["items"])]
    return b"".join([*items, fmt.end(jsonutil.dumps_bytes(_END_EXAMPLE))]).decode("utf-8")
