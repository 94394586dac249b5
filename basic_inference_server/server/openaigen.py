"""The answer of a request of OpenAI's API, made in the model server from what the hooks give
(:class:`Generation`).

Chat and completions: each ``str`` piece a ``_predict`` yields (after ``_post_process``) is one
completion token and, streamed, one chunk whose content it is; a ``_predict`` that returns a
``str`` gives its words as pieces. A dict piece may carry ``tool_calls`` (passed through, chat
only) or ``usage`` (the hook's own counts, which win over the pieces counted). The server honours:

- ``max_tokens`` / ``max_completion_tokens``: once that many pieces have come and the generator
  yields another, it is closed and ``finish_reason`` is ``length``;
- ``stop``: the text is cut before the first stop sequence, which is never sent (a piece that may
  begin one is held back until the next shows it does not), the generator is closed and
  ``finish_reason`` is ``stop``;
- ``stream``: chunks as the pieces come, then a chunk with ``finish_reason`` and, with
  ``stream_options.include_usage``, one with ``usage`` and no choices. The gateway ends the stream
  with ``data: [DONE]``.

Embeddings: one vector per input, in order, as floats or, with ``encoding_format`` base64, the
base64 of its little-endian float32 bytes (what the official client asks for by default).
"""

from __future__ import annotations

import base64
import re
import struct
import time
from collections.abc import Mapping
from enum import Enum
from typing import Any

from .. import jsonutil
from ..errors import ModelError
from .openaireq import OpenAIRequest

_WORDS = re.compile(r"\s*\S+|\s+")


class Finish(Enum):
    """Why the text is over (``finish_reason``); set once, by :meth:`Generation._over`."""

    STOP = "stop"  # the generator ended, or a stop sequence came
    LENGTH = "length"  # max_tokens pieces came, and the generator had more
    TOOL_CALLS = "tool_calls"  # the generator ended after yielding tool calls

_TAIL = b',"logprobs":null,"finish_reason":null}]}'


class Generation:
    """One request's answer as its pieces come: its chunks when it streams, its text otherwise."""

    __slots__ = ("_head", "_prefix", "finish", "full", "held", "parts", "pieces", "request", "role_sent",
                 "tool_calls", "usage")

    def __init__(self, request: OpenAIRequest, request_id: str):
        self.request = request
        chat = request.kind == "chat"
        self._head = {"id": ("chatcmpl-" if chat else "cmpl-") + request_id,
                      "object": "chat.completion.chunk" if chat else "text_completion",
                      "created": int(time.time()), "model": request.model}
        self._prefix = jsonutil.dumps_bytes(self._head)[:-1] + b',"choices":[{"index":0,'
        self.pieces = 0  # completion tokens: the str pieces taken
        self.full = False  # max_tokens pieces taken: one more cuts the text
        self.finish: Finish | None = None  # once the text is over
        self.held = ""  # text that may begin a stop sequence, not sent yet
        self.parts: list[str] = []  # the text, when it does not stream
        self.tool_calls: list[Any] = []
        self.usage: Mapping[str, Any] | None = None  # the hook's own counts
        self.role_sent = False

    # -- pieces in ------------------------------------------------------------------------------
    def feed(self, piece: Any, out: Any) -> bool:
        """Take one piece (``out``: the call's StreamOut, None when it does not stream); False when
        the generator is to stop: the text is over, or the client left."""
        for chunk in self.take(piece):
            if not out.put(chunk):
                return False
        return self.finish is None

    def take(self, piece: Any) -> list[bytes]:
        """The chunks one piece makes (none when the answer does not stream)."""
        if self.finish is not None:
            return []
        if isinstance(piece, str):
            return self._text(piece)
        if isinstance(piece, Mapping) and piece and piece.keys() <= {"tool_calls", "usage"}:
            if "usage" in piece:
                self.usage = _usage(piece["usage"])
            return self._tool_calls(piece["tool_calls"]) if piece.get("tool_calls") is not None else []
        raise ModelError(f"a piece of an OpenAI {self.request.kind} answer must be a str, or a dict with tool_calls "
                         f"and/or usage, got {type(piece).__name__}")

    def take_plain(self, result: Any) -> list[bytes]:
        """What a ``_predict`` that did not yield returned: a str (its words are the pieces), a dict
        piece, or a list of pieces."""
        pieces = _WORDS.findall(result) if isinstance(result, str) else result if isinstance(result, list) else [result]
        chunks: list[bytes] = []
        for piece in pieces:
            if piece is not None:
                chunks += self.take(piece)
        return chunks

    def _text(self, piece: str) -> list[bytes]:
        if not piece:
            return []
        if self.full:  # max_tokens pieces came, and more: the text is cut here
            self._over(Finish.LENGTH)
            return []
        self.pieces += 1
        limit = self.request.max_tokens
        if limit is not None and self.pieces >= limit:
            self.full = True
        text = self._scan(piece) if self.request.stops else piece
        if not text:
            return []
        if self.request.stream:
            return [self._content(text)]
        self.parts.append(text)
        return []

    def _scan(self, piece: str) -> str:
        """What of the text so far may go out: up to a stop sequence (the text is over), or all but
        what may begin one."""
        text = self.held + piece
        stops = self.request.stops
        found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
        if found:
            self.held = ""
            self._over(Finish.STOP)
            return text[:min(found)]
        keep = max(_held_back(text, stop) for stop in stops)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def _tool_calls(self, calls: Any) -> list[bytes]:
        if self.request.kind != "chat":
            raise ModelError("tool_calls are answered on chat completions only")
        if not isinstance(calls, list) or not all(isinstance(call, Mapping) for call in calls):
            raise ModelError("tool_calls must be a list of objects ({\"id\", \"type\": \"function\", \"function\": "
                             "{\"name\", \"arguments\"}})")
        start = len(self.tool_calls)
        self.tool_calls += calls
        if not self.request.stream:
            return []
        indexed = [{"index": start + number, **call} for number, call in enumerate(calls)]
        return [self._chunk(b'"delta":{' + self._role() + b'"tool_calls":' + jsonutil.dumps_bytes(indexed) + b"}")]

    # -- chunks out -----------------------------------------------------------------------------
    def _role(self) -> bytes:
        if self.role_sent:
            return b""
        self.role_sent = True
        return b'"role":"assistant",'

    def _content(self, text: str) -> bytes:
        if self.request.kind == "chat":
            return self._chunk(b'"delta":{' + self._role() + b'"content":' + jsonutil.dumps_bytes(text) + b"}")
        return self._chunk(b'"text":' + jsonutil.dumps_bytes(text))

    def _chunk(self, choice: bytes) -> bytes:
        return self._prefix + choice + _TAIL

    def closing(self) -> list[bytes]:
        """The last chunks of a stream: the text held back, the finish_reason, the usage when asked."""
        chunks = [self._content(self.held)] if self.held else []
        self.held = ""
        finish = self._finish_reason().encode("ascii")
        empty = b'"delta":{}' if self.request.kind == "chat" else b'"text":""'
        chunks.append(self._prefix + empty + b',"logprobs":null,"finish_reason":"' + finish + b'"}]}')
        if self.request.include_usage:
            chunks.append(jsonutil.dumps_bytes({**self._head, "choices": [], "usage": self.usage_counts()}))
        return chunks

    def whole(self) -> bytes:
        """The answer of a request that does not stream."""
        text = "".join(self.parts) + self.held
        finish = self._finish_reason()
        head = {**self._head, "object": "chat.completion" if self.request.kind == "chat" else "text_completion"}
        if self.request.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text if text or not self.tool_calls else None}
            if self.tool_calls:
                message["tool_calls"] = self.tool_calls
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return jsonutil.dumps_bytes({**head, "choices": [choice], "usage": self.usage_counts()})

    def _over(self, reason: Finish) -> None:
        """The one place the text ends (the first reason stays)."""
        if self.finish is None:
            self.finish = reason

    def _finish_reason(self) -> str:
        self._over(Finish.TOOL_CALLS if self.tool_calls else Finish.STOP)
        return self.finish.value

    def usage_counts(self) -> dict[str, int]:
        reported = self.usage or {}
        prompt = reported.get("prompt_tokens", self.request.prompt_tokens)
        completion = reported.get("completion_tokens", self.pieces)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": reported.get("total_tokens", prompt + completion)}

    # -- embeddings -----------------------------------------------------------------------------
    def embeddings(self, result: Any) -> bytes:
        """The answer of an embeddings request: one vector per input, in order."""
        request = self.request
        rows = None if isinstance(result, (str, bytes, Mapping)) or not hasattr(result, "__len__") else result
        if rows is None or len(rows) != request.inputs:
            got = len(rows) if rows is not None else type(result).__name__
            raise ModelError(f"_predict must return one vector per input ({request.inputs}), got {got}")
        data = []
        for index, row in enumerate(rows):
            try:
                vector: Any = (base64.b64encode(_float32_le(row)).decode("ascii") if request.base64
                               else row.tolist() if hasattr(row, "tolist") else [float(x) for x in row])
            except (TypeError, ValueError, struct.error) as exc:
                raise ModelError(f"embedding {index} is not a vector of numbers: {exc}") from None
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = request.prompt_tokens
        return jsonutil.dumps_bytes({"object": "list", "data": data, "model": request.model,
                                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _held_back(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop`` (and is not all of it)."""
    last = text[-1]
    k = min(len(stop) - 1, len(text))
    while k > 0:
        k = stop.rfind(last, 0, k) + 1  # the next candidate ends with the text's last character
        if k and text.endswith(stop[:k]):
            return k
        k -= 1
    return 0


def _float32_le(row: Any) -> bytes:
    if hasattr(row, "astype"):  # a numpy row: no Python float per value
        return row.astype("<f4").tobytes()
    return struct.pack(f"<{len(row)}f", *row)


def _usage(usage: Any) -> Mapping[str, Any]:
    if not isinstance(usage, Mapping) or not all(
            isinstance(usage.get(k, 0), int) for k in ("prompt_tokens", "completion_tokens", "total_tokens")):
        raise ModelError("usage must be an object of token counts (prompt_tokens, completion_tokens, total_tokens)")
    return usage
