"""``/jobs`` in the HTTP front's event loop: submit, read (long-polling with ``?wait=S``), list
and cancel durable jobs; and ``POST /run`` with ``Prefer: respond-async``, which submits too.

A submission is parsed on the store's thread, never in the loop: its ``SIGNATURE`` must name an
endpoint (404), ``PRIORITY`` is 0-9 (default 5, higher first) and ``WEBHOOK`` a URL; both are
removed from the body the hooks get. It is answered 202 once committed to disk. With API keys
on, a job is its key's (:mod:`.access`).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from ... import jsonutil, requestid
from ...errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    ServingError,
    SignatureDisabled,
    UnknownSignature,
)
from ...jsonbody import JsonLimits
from ...transport.httpfront import HttpRequest, Responder
from ...transport.streamformat import SSE
from ..routing.router import INLINE_SCAN, Router
from .access import Access, Caller
from .backend import Store
from .dispatcher import Dispatcher
from .records import JobRecord, JobState, new_job_id
from .storethread import StoreThread
from .submission import read_submission, scan_submission

PREFIX = "/jobs"
MAX_WAIT = 300.0  # seconds one long-poll may hold its connection (?wait=S above is cut to this)
MAX_LIST = 1000
JOB_FIELDS = ("PRIORITY", "WEBHOOK")  # the job's own fields: removed before the body reaches the hooks


class _Pending:
    """A request waiting for the store or for its job to end: forgotten when its client leaves."""

    __slots__ = ("forget", "gone", "on_resumed")

    def __init__(self) -> None:
        self.gone = False
        self.forget: Callable[[], None] | None = None
        self.on_resumed: Callable[[], None] | None = None  # a streamed answer waits for its client to drain

    def resumed(self) -> None:
        on_resumed, self.on_resumed = self.on_resumed, None
        if on_resumed is not None:
            on_resumed()

    def cancel(self) -> None:
        self.gone = True
        if self.forget is not None:
            self.forget()
            self.forget = None


class JobsPath:
    def __init__(self, store: StoreThread, dispatcher: Dispatcher, router: Router, limits: JsonLimits,
                 allowed_hosts: tuple[str, ...] | None = None, access: Access | None = None):
        self.limits = limits
        self.access = access or Access()  # API keys (off without BIS_API_KEYS_FILE) and the admin token
        self.allowed_hosts = allowed_hosts  # WEBHOOK_ALLOWED_HOSTS
        self.store = store
        self.dispatcher = dispatcher
        self.router = router

    def __call__(self, request: HttpRequest, respond: Responder) -> _Pending:
        """A request to /jobs or under it."""
        return self.handle(request, respond, self._route)

    def submit_async(self, request: HttpRequest, respond: Responder) -> _Pending:
        """``POST /run`` with ``Prefer: respond-async``: the same as ``POST /jobs``."""
        return self.handle(request, respond, lambda request, answer, _pending: self.submit(request, answer))

    @staticmethod
    def handle(request: HttpRequest, respond: Responder,
               route: Callable[[HttpRequest, _Answer, _Pending], None]) -> _Pending:
        """Run ``route`` for a request, its request id bound; a ServingError it raises is answered."""
        pending = _Pending()
        answer = _Answer(respond, pending)
        token = requestid.bind(request.request_id)
        try:
            route(request, answer, pending)
        except ServingError as exc:
            answer.error(exc)
        finally:
            requestid.unbind(token)
        return pending

    def _route(self, request: HttpRequest, answer: _Answer, pending: _Pending) -> None:
        path, _, query = request.target.decode("latin-1").partition("?")
        parts = path.rstrip("/").split("/")  # "", "jobs"[, id]
        method = request.method
        if len(parts) == 2:
            if method == "POST":
                self.submit(request, answer)
            elif method in ("GET", "HEAD"):
                self._list(_query(query), answer, self.access.reader(request))
            else:
                raise MethodNotAllowed(f"{method} is not allowed on /jobs", allow="GET, HEAD, POST")
        elif len(parts) == 3 and parts[2]:
            job_id = parts[2]
            if method in ("GET", "HEAD"):
                self._get(job_id, _wait_of(_query(query)), answer, pending, self.access.reader(request))
            elif method == "DELETE":
                self._cancel(job_id, answer, self.access.reader(request))
            else:
                raise MethodNotAllowed(f"{method} is not allowed on /jobs/<id>", allow="GET, HEAD, DELETE")
        elif len(parts) == 4 and parts[2] and parts[3] == "events":
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on /jobs/<id>/events", allow="GET, HEAD")
            JobEvents(self, parts[2], answer, pending, self.access.reader(request)).start()
        else:
            raise NotFound(f"no route {path}: /jobs, /jobs/<id> and /jobs/<id>/events are")

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, request: HttpRequest, answer: _Answer) -> None:
        """``POST /jobs`` (and ``POST /run`` with ``Prefer: respond-async``): 202 once durable."""
        caller = self.access.submitter(request)  # (401, 429) its key in flight until answered
        try:
            self._submit(request, answer, caller)
        except ServingError:
            self.access.done(caller)
            raise

    def _submit(self, request: HttpRequest, answer: _Answer, caller: Caller) -> None:
        key = request.header(b"idempotency-key")
        if key is not None and not 0 < len(key) <= 255:
            raise BadRequest("Idempotency-Key: expected 1 to 255 characters")
        idempotency_key = caller.scoped(key.decode("latin-1")) if key is not None else None
        body, read = request.body, self.reader(caller)

        def op(store: Store) -> tuple[JobRecord, bool]:
            signature, priority, webhook, inputs = read(body)
            job = JobRecord(new_job_id(), signature, JobState.QUEUED, priority, time.time(), webhook=webhook,
                            owner=caller.name)
            job, new = store.submit(job, inputs, idempotency_key)
            if not caller.sees(job.owner):  # a key used while keys were off, spelled as this key's own
                raise Conflict("Idempotency-Key: this key is taken: send another")
            return job, new

        def done(result: Any, error: ServingError | None) -> None:
            self.access.done(caller)
            if error is not None:
                answer.error(error)
                return
            job, new = result
            if new:
                self.dispatcher.submitted(job)
            answer(202 if new else 200, job.to_json(), [("Location", f"{PREFIX}/{job.job_id}")])
        self.store.call(op, done, durable=True)

    def reader(self, caller: Caller) -> Callable[[bytes], tuple[str, int, str | None, bytes]]:
        """What reads a submission of ``caller`` on the store's thread: (signature, priority,
        webhook, the body the hooks get); ServingError for one that cannot run (400, 403: an
        endpoint its key may not call, 404)."""
        router, limits, allowed = self.router, self.limits, self.allowed_hosts
        known = router.table.routes

        def read(body: bytes) -> tuple[str, int, str | None, bytes]:
            if len(body) > INLINE_SCAN:  # never parsed in the gateway: the model server reads it
                signature, priority, webhook, inputs = scan_submission(body, router, allowed)
            else:
                signature, priority, webhook, inputs = read_submission(body, limits, allowed)
            caller.may_call(signature)
            if signature not in known.servers:
                endpoint = known.endpoints.get(signature)
                if endpoint is None or endpoint.is_support:
                    raise UnknownSignature(f"Bad signature {signature!r}. Available signatures/servers: "
                                           f"{sorted(known.servers)}")
                if endpoint.disabled:  # its jobs would wait for ever
                    raise SignatureDisabled(f"endpoint {signature!r} is disabled in the configuration; an admin "
                                            "can start it with /start_server")
            return signature, priority, webhook, inputs
        return read

    # -- reading ----------------------------------------------------------------------------------
    def _get(self, job_id: str, wait: float, answer: _Answer, pending: _Pending, caller: Caller) -> None:
        deadline = time.monotonic() + wait

        def done(job: JobRecord | None, error: ServingError | None) -> None:
            if pending.gone:
                return
            if error is not None:
                answer.error(error)
            elif job is None or not caller.sees(job.owner):
                answer.error(no_job(job_id))
            elif job.ended or time.monotonic() >= deadline:
                answer(200, job.to_json(), None)
            else:
                self._wait(job_id, deadline, answer, pending, caller)
        self.store.call(lambda s: s.get(job_id), done)

    def _wait(self, job_id: str, deadline: float, answer: _Answer, pending: _Pending, caller: Caller) -> None:
        loop = self.dispatcher.loop
        timer = None

        def told() -> None:
            if timer is not None:
                timer.cancel()
            pending.forget = None
            self._get(job_id, 0.0, answer, pending, caller)

        forget = self.dispatcher.wait(job_id, told)
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), lambda: (forget(), told()))

        def cancel_both() -> None:
            forget()
            timer.cancel()
        pending.forget = cancel_both

    def _list(self, query: dict[str, str], answer: _Answer, caller: Caller) -> None:
        state = _state_of(query.get("status"))
        signature = query.get("signature") or None
        limit = _int_of(query, "limit", 100, 1, MAX_LIST)
        cursor = _int_of(query, "cursor", 0, 0, 1 << 62) or None

        def done(jobs: list[JobRecord] | None, error: ServingError | None) -> None:
            if error is not None:
                answer.error(error)
                return
            listed = [job.fields() for job in jobs or ()]
            more = len(listed) == limit
            body = {"JOBS": listed, "NEXT_CURSOR": str(jobs[-1].seq) if more and jobs else None}
            answer(200, jsonutil.dumps_bytes(body), None)
        self.store.call(lambda s: s.list(state, signature, limit, cursor, caller.name), done)

    # -- cancelling -------------------------------------------------------------------------------
    def _cancel(self, job_id: str, answer: _Answer, caller: Caller) -> None:
        def op(store: Store) -> tuple[JobRecord | None, JobState | None]:
            if caller.name is not None:  # an API key cancels its own jobs only: another's is as if not there
                job = store.get(job_id)
                if job is None or not caller.sees(job.owner):
                    return None, None
            return store.cancel(job_id, time.time())

        def done(result: Any, error: ServingError | None) -> None:
            if error is not None:
                answer.error(error)
                return
            job, was = result
            if job is None:
                answer.error(no_job(job_id))
            elif was is None:
                answer.error(Conflict(f"job {job_id} has ended ({job.state.value}): there is nothing to cancel"))
            else:
                self.dispatcher.cancelled(job.job_id, job.signature, was)
                answer(200, job.to_json(), None)
        self.store.call(op, done, durable=True)


class _Answer:
    """Answers a request once, unless its client has left."""

    __slots__ = ("pending", "respond")

    def __init__(self, respond: Responder, pending: _Pending):
        self.respond = respond
        self.pending = pending

    def __call__(self, status: int, body: bytes, headers: list[tuple[str, str]] | None) -> None:
        if not self.pending.gone:
            self.pending.gone = True
            self.respond(status, body, headers)

    def error(self, exc: ServingError) -> None:
        self(exc.status, jsonutil.dumps_bytes(exc.to_body()), list(exc.headers().items()) or None)


def no_job(job_id: str) -> NotFound:
    """404 for a job that is not there, or not the caller's to see (the same words: nothing tells
    another key that the id exists)."""
    return NotFound(f"no job {job_id!r} (unknown, or purged after JOB_TTL)")


def _query(query: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


def _wait_of(query: dict[str, str]) -> float:
    text = query.get("wait")
    if text is None:
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        raise BadRequest(f"wait: expected seconds (0 to {MAX_WAIT:g}), got {text!r}") from None
    if not wait >= 0:
        raise BadRequest(f"wait: expected seconds (0 to {MAX_WAIT:g}), got {text!r}")
    return min(wait, MAX_WAIT)


def _state_of(text: str | None) -> JobState | None:
    if not text:
        return None
    try:
        return JobState(text.upper())
    except ValueError:
        raise BadRequest(f"status: expected one of {', '.join(s.value for s in JobState)}, got {text!r}") from None


def _int_of(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}, got {text!r}")
    return int(text)


class JobEvents:
    """``GET /jobs/<id>/events``: the job's items as Server-Sent Events, those kept first, then
    each new one as it comes, and ``event: end`` with the job (as ``GET /jobs/<id>``) once it has
    ended. A client that reads slower than the items come is sent them from the store when it
    has caught up (nothing waits in memory for it)."""

    PAGE = 256

    def __init__(self, jobs: JobsPath, job_id: str, answer: _Answer, pending: _Pending, caller: Caller):
        self.jobs, self.job_id, self.answer, self.pending, self.caller = jobs, job_id, answer, pending, caller
        self.respond = answer.respond
        self.sent = 0  # items written
        self.started = False
        self.lagging = False  # the client has not taken what was written: new items wait in the store
        self.reading = False  # a read of the store is on its way
        self.ended = False

    def start(self) -> None:
        self.pending.forget = self.jobs.dispatcher.follow(self.job_id, self._told)  # before reading: none missed
        self._read()

    def _read(self) -> None:
        self.reading = True
        job_id, after = self.job_id, self.sent
        self.jobs.store.call(lambda s: (s.get(job_id), s.items(job_id, after, self.PAGE)), self._got)

    def _got(self, result: Any, error: ServingError | None) -> None:
        self.reading = False
        if self.pending.gone and self.started:
            return
        if error is not None or result[0] is None or not self.caller.sees(result[0].owner):
            self._stop()
            if not self.started:
                self.answer.error(error or no_job(self.job_id))
            return
        job, items = result
        data = b"".join(SSE.item(item) for item in items)
        self.sent += len(items)
        if not self.started:
            self.started = True
            taken = self.respond.start_stream(SSE.content_type, data)
        else:
            taken = self.respond.chunk(data) if data else True
        if len(items) == self.PAGE:  # more kept than one page
            self._after(taken, self._read)
        elif job.ended or self.ended:
            self._end()
        else:
            self.lagging = not taken
            if not taken:
                self.pending.on_resumed = self._read

    def _told(self, index: int, item: bytes | None) -> None:
        if index < 0:
            self.ended = True
            if not self.lagging and not self.reading:
                self._read()  # the rest, then the end
            return
        if self.lagging or not self.started or self.reading:
            return  # the client catching up, or a read on its way, takes it from the store
        if index != self.sent or item is None:
            self._read()  # one came while the store was read, or on another gateway: take it from there
            return
        self.sent += 1
        if not self.respond.chunk(SSE.item(item or b"")):
            self.lagging = True
            self.pending.on_resumed = self._caught_up

    def _caught_up(self) -> None:
        self.lagging = False
        self._read()

    def _after(self, taken: bool, then: Callable[[], None]) -> None:
        if taken:
            then()
        else:
            self.pending.on_resumed = then

    def _end(self) -> None:
        self._stop()
        job_id = self.job_id

        def done(job: JobRecord | None, error: ServingError | None) -> None:
            body = job.to_json() if job is not None else b"{}"
            self.pending.gone = True
            self.respond.end_stream(SSE.end(body))
        self.jobs.store.call(lambda s: s.get(job_id), done)

    def _stop(self) -> None:
        if self.pending.forget is not None:
            self.pending.forget()
            self.pending.forget = None
