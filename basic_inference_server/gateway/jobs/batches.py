"""``/batches``: many jobs in one NDJSON body, their results in input order once all have ended
(the shape of OpenAI's Batch API).

``POST /batches`` (``Content-Type: application/x-ndjson``) takes one ``/run`` body per line, each
with a ``custom_id`` (removed before the hooks, as ``PRIORITY`` and ``WEBHOOK`` are). Every line
becomes a job of the batch; a line that cannot be read (not JSON, no ``SIGNATURE``, an unknown
endpoint, a bad ``PRIORITY``) becomes a FAILED job whose error names its line number, and the
others run. ``GET /batches/<id>`` counts its jobs by state; ``GET /batches/<id>/results`` gives
one NDJSON line per input line, ``{"custom_id", "status", "response"}`` or ``{"custom_id",
"status", "error"}``, in input order, once every job has ended (409 with the counts before).
With API keys on, a batch and its jobs are the submitting key's (:mod:`.access`): a line for an
endpoint the key may not call fails (403) and the others run.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from ... import jsonbody, jsonutil
from ...errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
)
from ...jsonbody import JsonLimits
from ...transport.httpfront import HttpRequest, Responder
from ..routing.router import INLINE_SCAN
from .access import Caller
from .backend import Store
from .records import JobRecord, JobState, iso, new_job_id
from .routes import JobsPath, _Answer, _Pending

PREFIX = "/batches"
NDJSON = "application/x-ndjson"
MAX_LINES = 50_000  # lines one batch may hold (OpenAI's limit too)
PAGE = 500  # result lines read from the store at a time


_CUSTOM_ID_AT = re.compile(rb'"custom_id"\s*:\s*"([^"\\]{0,256})"')


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def create(store: Store, body: bytes, read_line: Any, limits: JsonLimits,
           caller: Caller) -> tuple[dict[str, Any], list[JobRecord]]:
    """Store a batch of ``caller`` and its jobs (on the store's thread). Each line is read within
    the MAX_JSON_* ``limits``; ``read_line(data)`` gives (signature, priority, webhook, the body
    for the hooks) or raises ServingError. Returns the batch's description and the jobs queued."""
    lines = body.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise BadRequest("the batch is empty: send one JSON object per line (NDJSON)")
    if len(lines) > MAX_LINES:
        raise PayloadTooLarge(f"a batch holds at most {MAX_LINES} lines, this one has {len(lines)}")
    store.check_room(len(body))  # a full store refuses the batch before reading a line of it
    batch_id, now = new_batch_id(), time.time()
    store.add_batch(batch_id, now, len(lines), caller.name)
    jobs: list[tuple[JobRecord, bytes, tuple[str, int, str | None]]] = []
    for index, line in enumerate(lines):
        custom_id, signature, priority, webhook, inputs, failure = None, "", 5, None, b"", None
        try:
            if len(line) > INLINE_SCAN:  # not parsed here (read_line scans it; its model server reads it)
                found = _CUSTOM_ID_AT.search(line)
                custom_id = found.group(1).decode("utf-8", "replace") if found is not None else None
                signature, priority, webhook, inputs = read_line(line)
            else:
                data = jsonbody.loads_object(line, limits)  # BadRequest, PayloadTooLarge: that line fails
                custom_id = data.pop("custom_id", None)
                if custom_id is not None and not isinstance(custom_id, str):
                    raise BadRequest(f"custom_id: expected a string, got {custom_id!r}")
                signature, priority, webhook, inputs = read_line(jsonutil.dumps_bytes(data))
        except ServingError as exc:
            exc.message = f"line {index + 1}: {exc.message}"
            failure = exc
        job = JobRecord(new_job_id(), signature, JobState.QUEUED, priority, now, webhook=webhook, owner=caller.name)
        if failure is not None:
            job.state, job.status, job.answer = JobState.FAILED, failure.status, jsonutil.dumps_bytes(failure.to_body())
            inputs = b""
        jobs.append((job, inputs, (batch_id, index, custom_id)))
    store.submit_many(jobs)
    return describe(store, batch_id, caller), [job for job, _inputs, _batch in jobs if job.state is JobState.QUEUED]


def describe(store: Store, batch_id: str, caller: Caller) -> dict[str, Any]:
    """``GET /batches/<id>``: its counts by state (NotFound when there is no such batch, or it is
    not ``caller``'s to see: the same words)."""
    found = store.batch(batch_id)
    if found is None or not caller.sees(found[3]):
        raise NotFound(f"no batch {batch_id!r} (unknown, or purged after JOB_TTL)")
    created, total, stored, owner = found
    counts = {state.value: stored.get(state.value, 0) for state in JobState}
    ended = counts["SUCCEEDED"] + counts["FAILED"] + counts["CANCELLED"]
    return {"BATCH_ID": batch_id, "STATUS": "COMPLETED" if ended == total else "IN_PROGRESS",
            "CREATED": iso(created), "TOTAL": total, "COUNTS": counts,
            **({"OWNER": owner} if owner is not None else {})}


def results_page(store: Store, batch_id: str, after: int, caller: Caller) -> tuple[bytes, int | None]:
    """NDJSON lines of the jobs of ``batch_id`` from line ``after`` on (PAGE of them), and the
    index to go on from (None: that was the last page). Conflict while some have not ended;
    NotFound for a batch that is not ``caller``'s (checked with the first page)."""
    if after == 0:
        batch = describe(store, batch_id, caller)
        if batch["STATUS"] != "COMPLETED":
            raise Conflict(f"batch {batch_id} has not finished: {json.dumps(batch['COUNTS'])}")
    rows = store.batch_rows(batch_id, after, PAGE)
    out = []
    for _index, custom_id, state, answer in rows:
        key = b"response" if state == JobState.SUCCEEDED.value else b"error"
        head = json.dumps({"custom_id": custom_id, "status": state}, separators=(",", ":")).encode()
        out.append(head[:-1] + b',"' + key + b'":' + (answer or b"null") + b"}\n")
    more = rows[-1][0] + 1 if len(rows) == PAGE else None
    return b"".join(out), more


class BatchesPath:
    """``/batches`` in the HTTP front's event loop (the store's work on its own thread)."""

    def __init__(self, jobs: JobsPath):
        self.jobs = jobs
        self.store = jobs.store

    def __call__(self, request: HttpRequest, respond: Responder) -> _Pending:
        return JobsPath.handle(request, respond, lambda request, answer, pending: self._route(request, answer, respond,
                                                                                              pending))

    def _route(self, request: HttpRequest, answer: _Answer, respond: Responder, pending: _Pending) -> None:
        parts = request.target.decode("latin-1").partition("?")[0].rstrip("/").split("/")  # "", "batches"[, id[, x]]
        method = request.method
        if len(parts) == 2:
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed on /batches", allow="POST")
            self._submit(request, answer)
        elif len(parts) == 3 and parts[2]:
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on /batches/<id>", allow="GET, HEAD")
            batch_id, caller = parts[2], self.jobs.access.reader(request)
            self.store.call(lambda s: describe(s, batch_id, caller), lambda batch, error: answer.error(error) if error
                            else answer(200, jsonutil.dumps_bytes(batch), None))
        elif len(parts) == 4 and parts[2] and parts[3] == "results":
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on /batches/<id>/results", allow="GET, HEAD")
            self._results(parts[2], answer, respond, pending, self.jobs.access.reader(request))
        else:
            raise NotFound("no such route: /batches, /batches/<id> and /batches/<id>/results are")

    def _submit(self, request: HttpRequest, answer: _Answer) -> None:
        access = self.jobs.access
        caller = access.submitter(request)  # (401, 429) its key in flight until answered
        kind = (request.header(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != NDJSON.encode():
            access.done(caller)
            raise UnsupportedMediaType(f"a batch is NDJSON: send it with Content-Type: {NDJSON}, one /run body (and "
                                       "its custom_id) per line")
        body, read, limits = request.body, self.jobs.reader(caller), self.jobs.limits

        def done(result: Any, error: ServingError | None) -> None:
            access.done(caller)
            if error is not None:
                answer.error(error)
                return
            batch, queued = result
            for job in queued:
                self.jobs.dispatcher.submitted(job)
            answer(202, jsonutil.dumps_bytes(batch), [("Location", f"{PREFIX}/{batch['BATCH_ID']}")])
        self.store.call(lambda s: create(s, body, read, limits, caller), done, durable=True)

    def _results(self, batch_id: str, answer: _Answer, respond: Responder, pending: _Pending,
                 caller: Caller) -> None:
        def page(result: Any, error: ServingError | None, first: bool) -> None:
            if pending.gone and not first:
                return
            if error is not None:
                if first:
                    answer.error(error)
                else:  # the answer has begun: it can only be cut short
                    pending.gone = True
                    respond.end_stream(b"")
                return
            data, more = result
            if first:
                taken = respond.start_stream(NDJSON, data)
            elif more is None:
                pending.gone = True
                respond.end_stream(data)
                return
            else:
                taken = respond.chunk(data)
            if first and more is None:
                pending.gone = True
                respond.end_stream(b"")
                return
            fetch = lambda: self.store.call(lambda s: results_page(s, batch_id, more, caller),  # noqa: E731
                                            lambda r, e: page(r, e, False))
            if taken:
                fetch()
            else:
                pending.on_resumed = fetch  # the client reads slower than the store gives: wait for it
        self.store.call(lambda s: results_page(s, batch_id, 0, caller), lambda r, e: page(r, e, True))
