"""What a durable job is: its state machine (:class:`JobState`), its record as the store keeps it
(:class:`JobRecord`), and how it reads in JSON (``GET /jobs/<id>``).

A job's state changes only in :meth:`.store.JobStore._move` (in ``move`` of :mod:`.redisscripts` on a
Redis store), by the table below::

    QUEUED ──claim──▶ RUNNING ──answer──▶ SUCCEEDED / FAILED
      ▲  │              │ │
      │  │ cancel       │ └─ lost (a crash, a 502, the server gone), refused (503) ──▶ QUEUED
      │  ▼              ▼
      │ CANCELLED ◀─cancel
      └─ (at start: what was RUNNING when the gateway died is QUEUED again, or FAILED past JOB_MAX_ATTEMPTS)
"""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass, field
from enum import Enum


class JobState(Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    __hash__ = object.__hash__


NEXT: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
ENDED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def iso(when: float | None) -> str | None:
    """ISO 8601 in UTC, to the millisecond (None stays None)."""
    if when is None:
        return None
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class JobRecord:
    """One job as stored. ``body`` (the ``/run`` body without the job's own fields) is loaded
    only where it is needed (to run it); ``answer`` is the JSON answered when it ended: the
    ``/run`` answer (``RESULT``) when it SUCCEEDED, else the error (``ERROR``)."""

    job_id: str
    signature: str
    state: JobState
    priority: int
    created: float
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    webhook: str | None = None
    status: int | None = None  # the HTTP status of its answer, once it ended
    answer: bytes | None = None
    body: bytes | None = None
    seq: int = 0  # submission order (FIFO within a priority; the cursor of listings)
    webhook_state: str | None = None  # PENDING, DELIVERED or GAVE_UP once it ended (with a WEBHOOK)
    webhook_attempts: list = field(default_factory=list)  # {"AT", "STATUS" or "ERROR"} per delivery attempt
    entry: str | None = None  # on a Redis store, its entry in its queue's stream (the lease of a running job)
    owner: str | None = None  # the name of the API key that submitted it (None: keys were off)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def fields(self) -> dict:
        """Its JSON fields bar the answer."""
        return {"JOB_ID": self.job_id, "SIGNATURE": self.signature, "STATUS": self.state.value,
                "PRIORITY": self.priority, "CREATED": iso(self.created), "STARTED": iso(self.started),
                "FINISHED": iso(self.finished), "ATTEMPTS": self.attempts,
                **({"OWNER": self.owner} if self.owner is not None else {}),
                **({"WEBHOOK": self.webhook, "WEBHOOK_STATUS": self.webhook_state,
                    "WEBHOOK_DELIVERIES": self.webhook_attempts} if self.webhook else {})}

    def to_json(self, with_answer: bool = True) -> bytes:
        """``GET /jobs/<id>``: its fields, and ``RESULT`` or ``ERROR`` (the answer's JSON as it
        was stored, never parsed again)."""
        head = json.dumps(self.fields(), separators=(",", ":")).encode()
        if not with_answer or self.answer is None:
            return head
        key = b',"RESULT":' if self.state is JobState.SUCCEEDED else b',"ERROR":'
        return head[:-1] + key + self.answer + b"}"


def collected(items: list[bytes], end: bytes, plain: bool) -> bytes:
    """A streamed answer as /run answers a client that asked for no stream: the items in
    ``predict_result`` (``plain``: the one item, a ``_predict`` that yielded nothing), with the
    end's fields (call_id, signature, worker_id)."""
    try:
        fields = json.loads(end)
    except ValueError:
        fields = {}
    body = json.dumps({key: value for key, value in (fields if isinstance(fields, dict) else {}).items()
                       if key not in ("predict_result", "items")}, separators=(",", ":")).encode()
    result = items[0] if plain and len(items) == 1 else b"[" + b",".join(items) + b"]"
    head = b'{"predict_result":' + result
    return head + (b"," + body[1:] if len(body) > 2 else b"}")
