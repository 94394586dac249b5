"""How a streamed answer is written for the client: Server-Sent Events or NDJSON.

A client asks for a stream with ``Accept: text/event-stream`` (SSE) or ``Accept:
application/x-ndjson``, or with ``"STREAM": true`` in the body (SSE). The items, the end and an
error that ends a stream early are written as:

=========  ===========================================  ================================
           SSE (``text/event-stream``)                  NDJSON (``application/x-ndjson``)
=========  ===========================================  ================================
item       ``data: <item JSON>\\n\\n``                    ``<item JSON>\\n``
end        ``event: end\\ndata: <envelope JSON>\\n\\n``    ``{"END": <envelope JSON>}\\n``
error      ``event: error\\ndata: <error JSON>\\n\\n``     ``<error JSON>\\n`` (it has ``"ERROR"``)
=========  ===========================================  ================================

The envelope is the ordinary answer's without ``predict_result``: ``call_id``, ``signature``,
``worker_id``, ``items``, ``time``, ``ver``, ... JSON is written compact, so no item has a newline.
"""

from __future__ import annotations

from dataclasses import dataclass

SSE_TYPE = "text/event-stream"
NDJSON_TYPE = "application/x-ndjson"


@dataclass(frozen=True)
class StreamFormat:
    content_type: str
    sse: bool

    def item(self, data: bytes) -> bytes:
        return b"data: " + data + b"\n\n" if self.sse else data + b"\n"

    def end(self, envelope: bytes) -> bytes:
        return b"event: end\ndata: " + envelope + b"\n\n" if self.sse else b'{"END":' + envelope + b"}\n"

    def error(self, error: bytes) -> bytes:
        return b"event: error\ndata: " + error + b"\n\n" if self.sse else error + b"\n"


class OpenAIEvents(StreamFormat):
    """OpenAI's streams: SSE items (chunks), ended by the stream's last events as the model server
    wrote them (the chunk with finish_reason, the usage) and ``data: [DONE]``; an error that ends
    one early is an item holding OpenAI's error object."""

    def end(self, envelope: bytes) -> bytes:
        return envelope + b"data: [DONE]\n\n"

    def error(self, error: bytes) -> bytes:
        return b"data: " + error + b"\n\ndata: [DONE]\n\n"


SSE = StreamFormat(SSE_TYPE, True)
NDJSON = StreamFormat(NDJSON_TYPE, False)
OPENAI_SSE = OpenAIEvents(SSE_TYPE, True)


def sse_events(items: list[bytes]) -> bytes:
    """``items`` as Server-Sent Events, one ``data:`` each."""
    return b"".join(b"data: " + item + b"\n\n" for item in items)


def from_accept(accept: str | None) -> StreamFormat | None:
    """The stream format an ``Accept`` header asks for (the first one it names), or None."""
    if not accept:
        return None
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if media in (SSE_TYPE, NDJSON_TYPE) and not _refused(params):
            return SSE if media == SSE_TYPE else NDJSON
    return None


def _refused(params: str) -> bool:
    """``q=0`` means "not this one"."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value) <= 0
            except ValueError:
                return False
    return False
