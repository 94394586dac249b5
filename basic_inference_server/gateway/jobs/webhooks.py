"""Telling a job's ``WEBHOOK`` that it ended, signed per the Standard Webhooks specification.

When a job with a ``WEBHOOK`` ends (SUCCEEDED, FAILED or CANCELLED), the store marks its delivery
due; this module POSTs ``{"type": "job.succeeded"|"job.failed"|"job.cancelled", "timestamp",
"data": <the job, as GET /jobs/<id> answers it>}`` with the ``webhook-id`` (the job's id, the same
on every attempt, so a receiver can drop repeats), ``webhook-timestamp`` and ``webhook-signature``
(``v1,<base64 HMAC-SHA256>``) headers, made by the ``standardwebhooks`` package with the secret
``whsec_<base64>`` of ``BIS_WEBHOOK_SECRET`` (or ``BIS_WEBHOOK_SECRET_FILE``, or one generated and
kept in ``_cache/_data/webhook_secret``). Any answer but a 2xx is a failed attempt; attempts
follow the specification's schedule (at once, 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h)
for up to WEBHOOK_RETRY_S after the job ended, and every attempt is kept on the job. Deliveries
are due in the store, so a restart resumes them. They run on a few threads of their own, each
bounded by a timeout: a receiver that hangs holds one of them, never the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import os
import secrets
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from ...errors import BadRequest, ServingError
from ...webutil import secret_from_env
from .records import JobRecord, iso
from .stats import JobStats
from .store import DELIVERED, GAVE_UP
from .storethread import StoreThread

SECRET_ENV, SECRET_FILE_ENV = "BIS_WEBHOOK_SECRET", "BIS_WEBHOOK_SECRET_FILE"
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000)  # seconds before each attempt; then every 36000
TICK = 1.0  # how often due deliveries are looked for
TIMEOUT = 10.0  # seconds one attempt may take
THREADS = 4
BATCH = 64


def resolve_secret(data_folder: Path) -> str:
    """``BIS_WEBHOOK_SECRET``, else the file ``BIS_WEBHOOK_SECRET_FILE`` names, else the secret kept
    in ``data_folder`` (made at first use). ValueError naming the variable when it is not a
    ``whsec_<base64>`` secret (never the secret itself)."""
    value, where = secret_from_env(SECRET_ENV, SECRET_FILE_ENV)
    if not value:
        path, where = data_folder / "webhook_secret", str(data_folder / "webhook_secret")
        if not path.exists():
            data_folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        value = path.read_text(encoding="utf-8").strip()
    key = value.removeprefix("whsec_")
    try:
        if not value.startswith("whsec_") or len(base64.b64decode(key, validate=True)) < 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise ValueError(f"{where}: expected whsec_ then at least 16 bytes in base64") from None
    return value


def check_url(url: str, allowed: tuple[str, ...] | None) -> None:
    """BadRequest unless ``url`` is an http(s) URL to a host WEBHOOK_ALLOWED_HOSTS allows."""
    parsed = urllib.parse.urlsplit(url)
    host = (parsed.hostname or "").lower()
    if parsed.scheme not in ("http", "https") or not host:
        raise BadRequest(f"WEBHOOK: expected an http:// or https:// URL, got {url!r}")
    if allowed is not None and not host_allowed(host, allowed):
        raise BadRequest(f"WEBHOOK: host {host!r} is not in WEBHOOK_ALLOWED_HOSTS")


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    return any(entry == "*" or entry == host or (entry.startswith("*.") and host.endswith(entry[1:]))
               for entry in allowed)


class Webhooks:
    def __init__(self, loop: asyncio.AbstractEventLoop, store: StoreThread, secret: str, retry_s: float,
                 allowed: tuple[str, ...] | None, stats: JobStats):
        from standardwebhooks import Webhook  # imported when jobs are on, not by every gateway module

        self.loop = loop
        self.store = store
        self.signer = Webhook(secret)
        self.retry_s = retry_s
        self.allowed = allowed
        self.stats = stats
        self._sending: set[str] = set()
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="webhook")
        self._local = threading.local()
        self._tick_due = False
        self._closed = False

    def start(self) -> None:
        self.loop.call_later(TICK, self._tick)

    def kick(self) -> None:
        """Look for due deliveries at once (a job with a WEBHOOK has ended)."""
        if not self._tick_due and not self._closed:
            self._tick_due = True
            self.loop.call_soon(self._look)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _tick(self) -> None:
        if self._closed:
            return
        self._look()
        self.loop.call_later(TICK, self._tick)

    def _look(self) -> None:
        self._tick_due = False
        self.store.call(lambda s: s.due_webhooks(time.time(), BATCH), self._due)

    def _due(self, jobs: list[JobRecord] | None, error: ServingError | None) -> None:
        if error is not None or self._closed:
            return
        for job in jobs or ():
            if job.job_id not in self._sending:
                self._sending.add(job.job_id)
                future = self._pool.submit(self._deliver, job)
                future.add_done_callback(lambda done, job=job: self.loop.call_soon_threadsafe(
                    self._sent, job, done.result() if not done.cancelled() and done.exception() is None
                    else {"ERROR": "not sent: the gateway stopped"}))

    # -- a delivery attempt (on a webhook thread) ------------------------------------------------------
    def _deliver(self, job: JobRecord) -> dict[str, Any]:
        attempt: dict[str, Any] = {"AT": iso(time.time())}
        try:
            check_url(job.webhook or "", self.allowed)
        except BadRequest as exc:
            attempt["ERROR"] = exc.message
            return attempt
        now = datetime.datetime.now(tz=datetime.timezone.utc)
        payload = (b'{"type":"job.%s","timestamp":"%s","data":' % (job.state.value.lower().encode(),
                                                                     iso(now.timestamp()).encode())
                   + job.to_json() + b"}")
        headers = {"content-type": "application/json", "webhook-id": job.job_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": self.signer.sign(job.job_id, now, payload.decode("utf-8"))}
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            answer = session.post(job.webhook, data=payload, headers=headers, timeout=TIMEOUT, allow_redirects=False)
            attempt["STATUS"] = answer.status_code
            answer.close()
        except requests.RequestException as exc:
            attempt["ERROR"] = f"{type(exc).__name__}: {exc}"[:300]
        return attempt

    # -- back in the loop -------------------------------------------------------------------------------
    def _sent(self, job: JobRecord, attempt: dict[str, Any]) -> None:
        self._sending.discard(job.job_id)
        ok = 200 <= attempt.get("STATUS", 0) < 300
        self.stats.delivery(ok)
        tries = len(job.webhook_attempts) + 1
        next_due = None
        if not ok:
            wait = SCHEDULE[tries] if tries < len(SCHEDULE) else SCHEDULE[-1]
            ended = job.finished or time.time()
            if time.time() + wait - ended <= self.retry_s:
                next_due = time.time() + wait
        state = DELIVERED if ok else GAVE_UP
        self.store.call(lambda s: s.delivered(job.job_id, attempt, next_due, state),
                        lambda _result, _error: None)
