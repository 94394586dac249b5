"""Durable jobs from Python: :meth:`Client.submit <.core.Client.submit>` returns a :class:`Job`.

Example::

    with Client("http://127.0.0.1:5002") as client:
        job = client.submit("dummy_model_demo2", INPUT_VALUE=3, idempotency_key="order-42")
        print(job.result(timeout=60)["predict_result"])
        rows = ({"SIGNATURE": "dummy_model_demo2", "INPUT_VALUE": i, "custom_id": str(i)} for i in range(100))
        batch = client.batch(rows)
        for row in batch.results(timeout=600):
            print(row["custom_id"], row["status"])
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from .errors import ClientError, Timeout, error_from_stream


class Client(Protocol):
    """What a job needs of :class:`~.core.Client` (typed here: core imports this module)."""

    timeout: Any

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
                admin: bool = False, retry: bool = True, headers: dict[str, str] | None = None) -> dict[str, Any]: ...

    def raw(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None,
            retry: bool = False) -> bytes: ...

ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
POLL = 25.0  # seconds one long-poll asks for (under the client's read timeout)


class JobCancelled(ClientError):
    """The job was cancelled before it gave a result."""


class Job:
    """A job the gateway holds: read it, wait for it, cancel it. ``id`` is its ``JOB_ID``;
    ``last`` what the gateway last said of it."""

    def __init__(self, client: Client, answer: dict[str, Any]):
        self.client = client
        self.id: str = answer["JOB_ID"]
        self.last = answer

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.last.get('STATUS')})"

    def get(self, wait: float = 0.0) -> dict[str, Any]:
        """The job as the gateway has it now (``wait``: up to that many seconds for it to end)."""
        path = f"/jobs/{self.id}" + (f"?wait={wait:g}" if wait > 0 else "")
        self.last = self.client.request("GET", path)
        return self.last

    def status(self) -> str:
        """``QUEUED``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``CANCELLED``."""
        return self.get()["STATUS"]

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the job has ended (long-polling); the job. Raises Timeout after ``timeout``
        seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        read_timeout = self.client.timeout.read_timeout
        poll = min(POLL, max(1.0, (read_timeout or POLL + 5) - 5))
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            job = self.get(wait=poll if left is None else max(0.0, min(poll, left)))
            if job["STATUS"] in ENDED:
                return job
            if left is not None and left <= 0:
                raise Timeout(f"job {self.id} is still {job['STATUS']} after {timeout}s")

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the job, then what ``/run`` answered. Raises the error the job ended with (the
        same exception classes as :meth:`Client.run <.core.Client.run>`), JobCancelled, or
        Timeout."""
        job = self.wait(timeout)
        if job["STATUS"] == "SUCCEEDED":
            return job["RESULT"]
        if job["STATUS"] == "CANCELLED":
            raise JobCancelled(f"job {self.id} was cancelled")
        raise error_from_stream(job.get("ERROR") or {"ERROR": f"job {self.id} failed"})

    def cancel(self) -> dict[str, Any]:
        """Cancel the job (queued or running); the job, ``CANCELLED``. A job that has ended
        raises ClientError with status 409."""
        self.last = self.client.request("DELETE", f"/jobs/{self.id}")
        return self.last


class Batch:
    """Jobs submitted together (``POST /batches``): ``id`` is its ``BATCH_ID``."""

    def __init__(self, client: Client, answer: dict[str, Any]):
        self.client = client
        self.id: str = answer["BATCH_ID"]
        self.last = answer

    def __repr__(self) -> str:
        return f"Batch({self.id!r}, {self.last.get('STATUS')})"

    def status(self) -> dict[str, Any]:
        """``STATUS`` (``IN_PROGRESS`` or ``COMPLETED``), ``TOTAL`` and ``COUNTS`` by job state."""
        self.last = self.client.request("GET", f"/batches/{self.id}")
        return self.last

    def wait(self, timeout: float | None = None, every: float = 0.5) -> dict[str, Any]:
        """Wait until every job of the batch has ended; its status. Raises Timeout after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status())["STATUS"] != "COMPLETED":
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"batch {self.id} is not done after {timeout}s: {status['COUNTS']}")
            time.sleep(every)
        return status

    def results(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait for the batch, then one row per input row, in order: ``custom_id``, ``status``, and
        ``response`` (what /run answered) or ``error``."""
        self.wait(timeout)
        return [json.loads(line) for line in self.client.raw("GET", f"/batches/{self.id}/results").splitlines()]
