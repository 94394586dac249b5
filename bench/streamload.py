"""A load generator for streamed answers (wrk sees a stream as one slow response).

    python bench/streamload.py URL --body FILE [--concurrency 8] [--duration 10] [--format sse|ndjson|openai]
                               [--once] [--timeout 60]

Closed loop, like wrk: ``--concurrency`` keep-alive connections, each POSTing the body and reading
the streamed answer as it arrives, then the next, until ``--duration`` has passed (streams under
way then run to their end and count; items/s is over the whole time, to the last stream's end).
With ``--once`` every connection runs exactly one stream, all sent when every connection is open
(the many-streams check). Prints one line ``BENCH_JSON {...}``.

Per stream: the time to the first item (from writing the request to the first complete item),
the total time (to the end of the HTTP answer), the gaps between items as they arrived, the
items, and whether it failed (not 200, an error event, fewer items than the other streams had,
a dropped connection, the timeout). The model's own first-item time is read from the first item's
``ms`` field when it has one. The HTTP answer (chunked, Content-Length or ended by closing) and
the items (SSE events, or lines: NDJSON, where ``{"END": ...}`` ends the stream) are parsed in
``data_received``, without a task per item: parsing costs about 6 us per item, and with the
kernel's share about 60 us at c=8 on a 2-vCPU machine, so that this process stays well below its
core at c=64 (6,400 items/s at most). Its CPU time is reported with every run.

``--format openai`` reads OpenAI's chat completion stream (SSE of ``chat.completion.chunk``): an
item is a chunk whose delta carries content (a piece: the time to the first item is the time to
first token) or tool calls; a role-only opening chunk, the closing chunk with its finish_reason and
``data: [DONE]`` are not items. Each chunk is parsed as JSON (a few microseconds more per item); a
chunk with ``error`` fails the stream, and so does an answer that ends without ``[DONE]``.

Standard library only (and uvloop when installed), so that any venv runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from urllib.parse import urlsplit

HEAD, CHUNK_SIZE, CHUNK_DATA, TRAILER, LENGTH, UNTIL_CLOSE = range(6)


class Stream:
    """What one streamed answer did."""

    __slots__ = ("sent", "first", "last", "ended", "items", "status", "error", "first_item", "done")

    def __init__(self, sent: float):
        self.sent = sent
        self.first: float | None = None
        self.last: float | None = None
        self.ended: float | None = None
        self.items = 0
        self.status = 0
        self.error: str | None = None
        self.first_item: bytes | None = None  # parsed after the run, for the model's own "ms"
        self.done = False  # --format openai: "data: [DONE]" came


class StreamConnection(asyncio.Protocol):
    """One keep-alive connection that runs one stream at a time (``run``)."""

    def __init__(self, sse: bool, gaps: list[float], openai: bool = False):
        self.sse = sse
        self.openai = openai  # SSE of OpenAI chat chunks
        self.gaps = gaps  # the gaps between items of every stream of the run
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.lines = bytearray()
        self.state = HEAD
        self.remaining = 0
        self.keep_alive = True
        self.event: bytes | None = None  # SSE: the event name of the current event
        self.stream: Stream | None = None
        self.done: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.stream is not None:
            if self.state == UNTIL_CLOSE:
                self._finish(time.perf_counter())
            else:
                self._fail("connection lost" if exc is None else f"connection lost: {type(exc).__name__}")

    def run(self, request: bytes) -> asyncio.Future:
        """Send ``request``; the future gets the :class:`Stream` when its answer has ended."""
        self.stream = Stream(time.perf_counter())
        self.done = asyncio.get_running_loop().create_future()
        self.state, self.event = HEAD, None
        self.buf.clear()
        self.lines.clear()
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        while self.stream is not None:
            state = self.state
            if state == CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(buf[:end].split(b";", 1)[0], 16)
                del buf[:end + 2]
                self.remaining, self.state = size, (CHUNK_DATA if size else TRAILER)
            elif state == CHUNK_DATA:
                if len(buf) < self.remaining + 2:
                    return
                self._body(buf[:self.remaining], now)
                del buf[:self.remaining + 2]
                self.state = CHUNK_SIZE
            elif state == HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head(bytes(buf[:end]))
                del buf[:end + 4]
            elif state == TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[:end + 2]
                if end == 0:
                    self._finish(now)
            elif state == LENGTH:
                piece = buf[:self.remaining]
                del buf[:len(piece)]
                self.remaining -= len(piece)
                self._body(piece, now)
                if self.remaining:
                    return
                self._finish(now)
            else:  # UNTIL_CLOSE
                self._body(buf, now)
                buf.clear()
                return

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        self.stream.status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        self.keep_alive = version == b"HTTP/1.1" and headers.get(b"connection") != b"close"
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self.state = CHUNK_SIZE
        elif b"content-length" in headers:
            self.remaining, self.state = int(headers[b"content-length"]), LENGTH
        else:
            self.state, self.keep_alive = UNTIL_CLOSE, False

    def _body(self, piece, now: float) -> None:
        lines = self.lines
        lines += piece
        start = 0
        while True:
            end = lines.find(b"\n", start)
            if end < 0:
                break
            self._line(lines[start:end], now)
            start = end + 1
        if start:
            del lines[:start]

    def _line(self, line: bytearray, now: float) -> None:
        stream = self.stream
        if stream.status != 200:
            if stream.error is None:
                stream.error = f"HTTP {stream.status}: {bytes(line[:200]).decode(errors='replace')}"
            return
        if self.sse:
            if not line:
                self.event = None
                return
            if line.startswith(b"event:"):
                self.event = bytes(line[6:]).strip()
                return
            if not line.startswith(b"data:"):
                return
            if self.event is not None:  # "end" (the envelope) or "error"
                if self.event == b"error" and stream.error is None:
                    stream.error = "error event: " + bytes(line[5:200]).decode(errors="replace").strip()
                return
            payload = line[5:]
            if self.openai and not self._is_piece(payload, stream):
                return
        else:
            if line.startswith(b'{"END"'):
                return
            if b'"ERROR"' in line:
                if stream.error is None:
                    stream.error = "error line: " + bytes(line[:200]).decode(errors="replace")
                return
            payload = line
        stream.items += 1
        if stream.first is None:
            stream.first, stream.first_item = now, bytes(payload)
        else:
            self.gaps.append(now - stream.last)
        stream.last = now

    @staticmethod
    def _is_piece(payload: bytearray, stream: Stream) -> bool:
        """--format openai: whether the chunk ``payload`` carries a piece; notes ``[DONE]`` and errors."""
        if payload.strip() == b"[DONE]":
            stream.done = True
            return False
        try:
            chunk = json.loads(payload)
            choices = chunk.get("choices") or [{}]  # none in a usage chunk (stream_options.include_usage)
            delta = choices[0].get("delta") or {}
        except (ValueError, AttributeError, TypeError):
            chunk, delta = {"error": "not a chat.completion.chunk"}, {}
        if "error" in chunk and stream.error is None:
            stream.error = "error chunk: " + bytes(payload[:200]).decode(errors="replace").strip()
        return bool(delta.get("content") or delta.get("tool_calls"))

    def _finish(self, now: float) -> None:
        stream, self.stream = self.stream, None
        stream.ended = now
        if stream.status != 200 and stream.error is None:  # a body without a newline: what is left of it
            stream.error = f"HTTP {stream.status}: {bytes(self.lines[:200]).decode(errors='replace')}"
        elif self.openai and not stream.done and stream.error is None:
            stream.error = "no [DONE]: the answer ended without it"
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(stream)

    def _fail(self, reason: str) -> None:
        stream, self.stream = self.stream, None
        stream.error = stream.error or reason
        stream.ended = time.perf_counter()
        if self.done is not None and not self.done.done():
            self.done.set_result(stream)


def request_bytes(url: str, body: bytes, sse: bool, extra: list[str] | None = None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    accept = "text/event-stream" if sse else "application/x-ndjson"
    head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Content-Type: application/json\r\nAccept: {accept}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{line}\r\n" for line in extra or []) + "\r\n")
    return parts.hostname, parts.port, head.encode() + body


class Gate:
    """--once: the first request goes out when every connection is open (or has failed)."""

    def __init__(self, parties: int):
        self.left = parties
        self.open = asyncio.Event()

    def arrive(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.open.set()


async def client(host: str, port: int, request: bytes, sse: bool, deadline: float | None, timeout: float,
                 streams: list[Stream], gaps: list[float], gate: Gate | None = None, openai: bool = False) -> None:
    """One connection's loop: a stream after another until ``deadline`` (one stream when None)."""
    loop = asyncio.get_running_loop()
    conn: StreamConnection | None = None
    while True:
        if conn is None or conn.transport is None or conn.transport.is_closing():
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: StreamConnection(sse, gaps, openai), host, port), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                failed = Stream(time.perf_counter())
                failed.error, failed.ended = f"connect: {type(exc).__name__}", time.perf_counter()
                streams.append(failed)
                if gate is not None:
                    gate.arrive()
                if deadline is None or time.perf_counter() >= deadline:
                    return
                conn = None
                await asyncio.sleep(0.1)
                continue
            if gate is not None:
                gate.arrive()
                await gate.open.wait()
                gate = None
        done = conn.run(request)
        try:
            stream = await asyncio.wait_for(asyncio.shield(done), timeout)
        except asyncio.TimeoutError:
            stream = done.result() if done.done() else conn.stream
            if not done.done():
                conn.stream = None
                stream.error, stream.ended = f"timeout after {timeout:g} s", time.perf_counter()
            conn.transport.close()
        streams.append(stream)
        if deadline is None or time.perf_counter() >= deadline:
            conn.transport.close()
            return


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def summary(streams: list[Stream], gaps: list[float], wall: float, cpu: float) -> dict:
    """The run's figures; a stream that ended with fewer items than the most any stream had
    (every good stream has the model's full count) is a failure too."""
    full = max((s.items for s in streams if s.error is None), default=0)
    for stream in streams:
        if stream.error is None and stream.items < full:
            stream.error = f"short: {stream.items} of {full} items"
    good = [s for s in streams if s.error is None]
    kinds: dict[str, int] = {}
    for stream in streams:
        if stream.error is not None:
            kind = stream.error.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    model_first = []
    for stream in good:
        try:
            model_first.append(float(json.loads(stream.first_item)["ms"]) / 1000)
        except (ValueError, KeyError, TypeError):
            pass
    items = sum(s.items for s in streams)
    ttfi = [s.first - s.sent for s in good]
    total = [s.ended - s.sent for s in good]
    return {
        "streams": len(good), "errors": len(streams) - len(good), "error_kinds": kinds,
        "error_sample": next((s.error for s in streams if s.error), None),
        "items": items, "items_per_stream": full,
        "items_per_s": round(items / wall, 1), "streams_per_s": round(len(good) / wall, 2),
        "ttfi_p50_ms": _ms(percentile(ttfi, 0.5)), "ttfi_p99_ms": _ms(percentile(ttfi, 0.99)),
        "total_p50_ms": _ms(percentile(total, 0.5)), "total_p99_ms": _ms(percentile(total, 0.99)),
        "total_max_ms": _ms(max(total, default=None)),
        "gap_p50_ms": _ms(percentile(gaps, 0.5)), "gap_p99_ms": _ms(percentile(gaps, 0.99)),
        "model_first_ms": _ms(percentile(model_first, 0.5)),
        "wall_s": round(wall, 3), "client_cpu_s": round(cpu, 3),
        "client_cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
        "client_cpu_us_per_item": round(cpu / items * 1e6, 1) if items else None,
    }


async def run(url: str, body: bytes, concurrency: int, duration: float, sse: bool, once: bool,
              timeout: float, headers: list[str] | None = None, openai: bool = False) -> dict:
    host, port, request = request_bytes(url, body, sse, headers)
    streams: list[Stream] = []
    gaps: list[float] = []
    gate = Gate(concurrency) if once else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = None if once else wall0 + duration
    await asyncio.gather(*(client(host, port, request, sse, deadline, timeout, streams, gaps, gate, openai)
                           for _ in range(concurrency)))
    return summary(streams, gaps, time.perf_counter() - wall0, time.process_time() - cpu0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="a file with the JSON body")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--format", choices=("sse", "ndjson", "openai"), default="sse")
    parser.add_argument("--once", action="store_true", help="one stream per connection, all at once")
    parser.add_argument("--timeout", type=float, default=60, help="seconds for one stream (and one connect)")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', sent with every request")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # the cheaper event loop, when this venv has it
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with open(args.body, "rb") as file:
        body = file.read()
    result = runner(run(args.url, body, args.concurrency, args.duration, args.format != "ndjson", args.once,
                        args.timeout, args.header, args.format == "openai"))
    result["event_loop"] = "uvloop" if runner is not asyncio.run else "asyncio"
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
