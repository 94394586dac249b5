"""``Stream``: the items of a streamed ``/run`` answer, each decoded as soon as its line arrives.

:meth:`Client.stream <basic_inference_server.client.Client.stream>` asks for NDJSON
(``Accept: application/x-ndjson``): one compact JSON item per line, then ``{"END": <envelope>}``,
or, when the model fails after its first item, the gateway's error body (it has ``"ERROR"``) as
the last line. The body is read with ``read1`` (whatever has arrived, never waiting to fill a
buffer), so an item is yielded when its line is complete, not when the answer is.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from .errors import REQUEST_ID_HEADER, ClientError, ServerError, Timeout, error_from_stream, reason_of

NDJSON_TYPE = "application/x-ndjson"
READ_SIZE = 64 * 1024


class Stream:
    """The items of one streamed answer, as they arrive; what :meth:`Client.stream` returns.

    Iterate it once, from one thread: each item is the decoded JSON the model's generator
    yielded (after ``_post_process``). The stream ends after the gateway's end line; then
    :attr:`envelope` holds that line's envelope and the connection goes back to the client's
    pool. When the model fails mid-stream, iterating raises the matching
    :class:`~basic_inference_server.client.errors.ClientError` (``status`` ``None``, ``request_id``
    set).

    Closing the stream before its end (``close()``, leaving its ``with`` block, or dropping the
    last reference to it, e.g. ``break`` out of ``for item in client.stream(...)``) closes the
    connection, and the gateway then cancels the request and closes the model's generator. Use
    ``with`` to make that happen at a known point.

    Example::

        with client.stream("chat", PROMPT="hello") as items:
            for item in items:
                print(item)
        print(items.envelope["call_id"], items.count)

    Attributes:
        request_id: The answer's ``X-Request-ID``.
        count: Items received so far.
        envelope: After a normal end, the gateway's envelope (``call_id``, ``signature``,
            ``worker_id``, ``items``, ``time``, ``ver``, ...); ``None`` before, and when the stream
            failed or was closed early.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse, url: str, read_timeout: float | None):
        self._response: urllib3.BaseHTTPResponse | None = response
        self._url = url
        self._read_timeout = read_timeout
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self.request_id: str | None = response.headers.get(REQUEST_ID_HEADER)
        self.count = 0
        self.envelope: dict[str, Any] | None = None
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith(NDJSON_TYPE):
            self.close()
            raise ServerError(f"{url} answered {content_type or 'no Content-Type'} to a request for a stream "
                              "(a gateway without streaming?)", status=response.status, request_id=self.request_id)

    @property
    def closed(self) -> bool:
        """Whether the stream has ended, failed or been closed."""
        return self._response is None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        if self._response is None:
            raise StopIteration
        try:
            line = self._line()
            while line is not None and not line.strip():
                line = self._line()
            if line is None:
                raise ServerError(f"the stream from {self._url} ended after {self.count} item(s) without its end "
                                  "line", request_id=self.request_id)
            try:
                value = json.loads(line)
            except ValueError:
                raise ServerError(f"the stream from {self._url} sent a line that is not JSON",
                                  request_id=self.request_id,
                                  body=line[:300].decode("utf-8", errors="replace")) from None
        except BaseException:
            self.close()  # a timeout, a lost connection or Ctrl-C: the gateway cancels the request
            raise
        # The gateway's end line and error line are the only dicts of these shapes it writes last.
        if isinstance(value, dict) and len(value) == 1 and isinstance(value.get("END"), dict):
            self.envelope = value["END"]
            self._finish()
            raise StopIteration
        if isinstance(value, dict) and "ERROR" in value and isinstance(value.get("error"), dict):
            self._finish()
            raise error_from_stream(value, self.request_id)
        self.count += 1
        return value

    def _line(self) -> bytes | None:
        """The next line without its newline (the rest of the body at its end), or None at the end."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            data = self._read()
            if not data:
                line, self._buffer, self._scanned = bytes(self._buffer), bytearray(), 0
                return line or None
            self._buffer += data

    def _read(self) -> bytes:
        """What has arrived of the body (waiting up to the read timeout for some), b"" at its end."""
        assert self._response is not None
        try:
            return self._response.read1(READ_SIZE) or b""
        except ReadTimeoutError as exc:
            raise Timeout(f"no item from {self._url} within {self._read_timeout}s after {self.count} item(s); the "
                          "stream was closed, which cancels it", request_id=self.request_id) from exc
        except ProtocolError as exc:
            raise ServerError(f"connection to {self._url} lost after {self.count} item(s): {reason_of(exc)}",
                              request_id=self.request_id) from exc
        except HTTPError as exc:
            raise ClientError(f"reading the stream from {self._url} failed: {exc}",
                              request_id=self.request_id) from exc

    def _finish(self) -> None:
        """After the last line the body's end is already there: reading it returns the connection
        to the pool. Anything else after the last line closes the connection instead."""
        try:
            at_end = not self._buffer.strip() and not self._read()
        except ClientError:
            at_end = False
        if not at_end:
            self.close()
            return
        response, self._response = self._response, None
        if response is not None:
            response.release_conn()  # done already by urllib3 when it saw the end; harmless then

    def close(self) -> None:
        """Stop reading; before the end this closes the connection, and the gateway cancels the request."""
        response, self._response = self._response, None
        if response is not None:
            response.close()  # the socket too: the gateway sees its client leave
            response.release_conn()  # the closed connection's slot goes back to the pool

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_response", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Stream {self._url} request {self.request_id} {state}, {self.count} item(s)>"
