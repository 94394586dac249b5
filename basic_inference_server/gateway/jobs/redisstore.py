"""The Redis job store (``JOB_STORE=redis://host:port/db``): one queue and one set of results for
many gateways, the Swarm stack's replicas or a Deployment's pods.

The queue is Redis Streams with a consumer group (one stream per endpoint and priority, see
:mod:`.redisscripts`): a gateway claims a job by reading its entry, which then stays pending for
that gateway, its lease, until the job ends. A running gateway renews its leases every third of
``JOB_LEASE_S``; the entries of a gateway that stopped (killed, cut off) go idle, and any other
gateway takes them over (``XAUTOCLAIM``) once ``JOB_LEASE_S`` has passed: the job runs again,
one attempt more, as after a crash of the embedded store's gateway. Every write is one Lua
script, atomic on the server; an attempt's end is fenced by its attempt number, so a gateway
whose lease was taken over cannot overwrite the attempt that replaced it. What changed is
published on a channel (:mod:`.redisevents`) that every gateway follows: a job queued elsewhere
is claimed here, and a ``?wait`` or an event stream here learns of a job that ended elsewhere.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` a job answered 202
survives a crash of Redis's machine, and on Redis 7.2 and later each group of submissions also
waits for ``WAITAOF`` (the jobs guide says how to run it). A single Redis (with replicas if you
like), not Redis Cluster: the scripts touch keys of many jobs at once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import redis

from ...errors import StoreFull
from . import redisscripts as lua
from .records import JobRecord, JobState
from .redisevents import RedisEvents
from .store import lost_error

logger = logging.getLogger(__name__)

PREFIX = "bis:"
TAKEOVER_BUDGET = 1000  # entries one look at the expired leases may take over
OWNED_PAGE = 500  # an API key's jobs read at a time for its listing
WEBHOOK_HOLD = 60.0  # seconds a due delivery is this gateway's before another may try it
ATTEMPTS = "<n>"  # in TAKEOVER's error, where the count goes
_NO_ANSWER = tuple("-" if name == "answer" else name for name in lua.FIELDS)  # HMGET of "-": nothing


class RedisStore:
    shared = True

    def __init__(self, url: str, password: str | None, max_bytes: int, lease_s: float):
        self.url = url
        self.client = redis.Redis.from_url(url, password=password, socket_timeout=10, socket_connect_timeout=5,
                                           health_check_interval=30)
        self.max_bytes = max_bytes
        self.lease_ms = int(lease_s * 1000)
        self.origin = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"  # its consumer name too
        self._scripts = {name: self.client.register_script(getattr(lua, name)) for name in (
            "SUBMIT", "CLAIM", "FINISH", "REQUEUE", "CANCEL", "TAKEOVER", "ADD_ITEMS", "PURGE", "DUE_WEBHOOKS",
            "DELIVERED")}
        self._durable = False
        # (operation number in the group, script, args, then): sent at the commit, or before the next read
        self._deferred: list[tuple[int, str, tuple, Callable[[Any], None] | None]] = []
        self._mark = 0
        self._op = -1  # the group's operation running (savepoint counts them)
        self._late: dict[int, Exception] = {}  # operations whose deferred writes Redis refused
        self._waitaof: bool | None = None  # probed at the first durable group
        self._used, self._used_at = 0, 0.0

    def _run(self, name: str, *args: Any, client: Any = None) -> Any:
        return self._scripts[name](keys=[PREFIX], args=args, client=client or self.client)

    # -- transactions: each operation is atomic on the server; a durable group waits for the AOF -----------
    def begin(self, durable: bool = True) -> None:
        self._durable = durable
        self._deferred, self._late, self._op = [], {}, -1

    def savepoint(self) -> None:
        self._mark = len(self._deferred)
        self._op += 1

    def release(self, ok: bool) -> None:
        if not ok:
            del self._deferred[self._mark:]  # what the failed operation deferred is not sent

    def commit(self) -> dict[int, Exception]:
        """Send what the group's operations deferred, in one pipeline (one round trip for a burst
        of submissions or ends); on Redis 7.2 and later, wait for the append-only file. Returns the
        operations whose writes Redis refused: they alone fail (the others' writes are stored)."""
        self._flush()
        if self._durable and self._has_waitaof():
            local, _replicas = self.client.execute_command("WAITAOF", 1, 0, 5000)
            if local < 1:
                raise redis.exceptions.TimeoutError("Redis did not write the jobs to its append-only file in 5 s")
        late, self._late = self._late, {}
        return late

    def _flush(self) -> None:
        """Send what was deferred: at the commit, and before any other operation of the group
        reads or writes (so that it sees what the operations before it did, as in a transaction).
        A write Redis refuses fails its own operation only (told at the commit)."""
        if self._deferred:
            deferred, self._deferred, self._mark = self._deferred, [], 0
            pipe = self.client.pipeline(transaction=False)
            for _op, name, args, _then in deferred:
                self._run(name, *args, client=pipe)
            for (op, _name, _args, then), result in zip(deferred, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(result, Exception):
                    self._late.setdefault(op, result)
                elif then is not None:
                    then(result)

    def rollback(self) -> None:
        self._deferred, self._late = [], {}

    def _defer(self, name: str, *args: Any, then: Callable[[Any], None] | None = None) -> None:
        """Run script ``name`` at the group's commit, with the others (``then(result)`` after)."""
        self._deferred.append((self._op, name, args, then))

    def _has_waitaof(self) -> bool:
        if self._waitaof is None:
            server, persistence = self.client.info("server"), self.client.info("persistence")
            version = tuple(int(part) for part in str(server["redis_version"]).split(".")[:2])
            self._waitaof = version >= (7, 2) and bool(persistence.get("aof_enabled"))
            if not persistence.get("aof_enabled"):
                logger.warning("Jobs: Redis at %s runs without its append-only file (appendonly no): a crash of "
                               "Redis loses the jobs since its last snapshot", self.url)
        return self._waitaof

    @staticmethod
    def is_outage(exc: Exception) -> bool:
        return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                                redis.exceptions.ReadOnlyError, OSError))

    def close(self) -> None:
        self.client.close()

    def subscribe(self, handle: Callable[[str, list[str]], None]) -> Callable[[], None]:
        """``handle(kind, args)`` (on the events' thread) for what the other gateways change;
        returns what stops it."""
        return RedisEvents(self.client, PREFIX + "events", self.origin, handle).stop

    # -- room ---------------------------------------------------------------------------------------------
    def check_room(self, adding: int) -> None:
        """StoreFull when ``adding`` bytes would take Redis's memory over JOB_STORE_MAX_MB."""
        now = time.monotonic()
        if now - self._used_at > 1.0:
            self._used, self._used_at = int(self.client.info("memory")["used_memory"]), now
        if self._used + adding > self.max_bytes:
            raise StoreFull(f"Redis holds {self._used / 1048576:.0f} MB, the job store's limit JOB_STORE_MAX_MB is "
                            f"{self.max_bytes / 1048576:.0f} MB: no job is accepted until finished ones expire "
                            "(JOB_TTL) or the limit is raised")
        self._used += adding

    # -- jobs -----------------------------------------------------------------------------------------------
    def _submit_args(self, job: JobRecord, body: bytes, idempotency_key: str | None,
                     batch: tuple[str, int, str | None] | None, tell: bool) -> list[Any]:
        extra: list[Any] = []
        if job.webhook:
            extra += ["webhook", job.webhook]
        if job.owner is not None:
            extra += ["keyname", job.owner]
        if batch is not None:
            extra += ["batch", batch[0], "bindex", batch[1]]
            if batch[2] is not None:
                extra += ["custom", batch[2]]
        if job.state is JobState.FAILED:
            extra += ["status", job.status or 400, "answer", job.answer or b"null"]
        else:
            extra += ["body", body]
        return [self.origin, job.job_id, job.signature, job.state.value, job.priority, repr(job.created),
                idempotency_key or "", int(tell), *extra]

    def submit(self, job: JobRecord, body: bytes, idempotency_key: str | None = None,
               batch: tuple[str, int, str | None] | None = None) -> tuple[JobRecord, bool]:
        self.check_room(len(body) + len(job.answer or b""))
        if idempotency_key is None:  # new for sure: sent with the group's other submissions
            self._defer("SUBMIT", *self._submit_args(job, body, None, batch, True),
                        then=lambda result: setattr(job, "seq", int(result[1])))
            return job, True
        self._flush()
        new, seq = self._run("SUBMIT", *self._submit_args(job, body, idempotency_key, batch, True))
        if not new:
            kept = self.get(seq.decode())
            if kept is not None:
                return kept, False
            raise StoreFull("the job of this Idempotency-Key was purged meanwhile: submit again")  # pragma: no cover
        job.seq = int(seq)
        return job, True

    def submit_many(self, jobs: list[tuple[JobRecord, bytes, tuple[str, int, str | None]]]) -> None:
        """The jobs of a batch, in one transaction (MULTI/EXEC: all or none), the others told once."""
        self._flush()
        self.check_room(sum(len(body) + len(job.answer or b"") for job, body, _batch in jobs))
        pipe = self.client.pipeline(transaction=True)
        for job, body, batch in jobs:
            self._run("SUBMIT", *self._submit_args(job, body, None, batch, False), client=pipe)
        counts: dict[str, int] = {}
        for job, _body, _batch in jobs:
            if job.state is JobState.QUEUED:
                counts[job.signature] = counts.get(job.signature, 0) + 1
        for signature, count in counts.items():
            pipe.publish(PREFIX + "events", json.dumps([self.origin, "queued", signature, count]))
        for (job, _body, _batch), (_new, seq) in zip(jobs, pipe.execute()[:len(jobs)], strict=True):
            job.seq = int(seq)

    def get(self, job_id: str) -> JobRecord | None:
        self._flush()
        row = self.client.hmget(PREFIX + "job:" + job_id, lua.FIELDS)
        return None if row[1] is None else _record(job_id, row)

    def _records(self, ids: list[bytes], fields: tuple[str, ...] = lua.FIELDS) -> list[JobRecord]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(PREFIX + "job:" + job_id.decode(), fields)
        return [_record(job_id.decode(), row) for job_id, row in zip(ids, pipe.execute(), strict=True)
                if row[1] is not None]

    def list(self, state: JobState | None, signature: str | None, limit: int, before: int | None,
             owner: str | None = None) -> list[JobRecord]:
        self._flush()
        if owner is not None:
            return self._owned(owner, state, signature, limit, before)
        index = ("st:" + state.value if state else "s" if signature else "all") + (":" + signature if signature else "")
        ids = self.client.zrevrangebyscore(PREFIX + index, f"({before}" if before else "+inf", "-inf", 0, limit)
        return self._records(ids, _NO_ANSWER)

    def _owned(self, owner: str, state: JobState | None, signature: str | None, limit: int,
               before: int | None) -> list[JobRecord]:
        """The jobs of an API key's name, newest first, those of ``state`` and ``signature`` taken
        as they come (one index per key: its jobs are few beside all the queue's)."""
        found: list[JobRecord] = []
        bound = f"({before}" if before else "+inf"
        while len(found) < limit:
            page = self.client.zrevrangebyscore(PREFIX + "o:" + owner, bound, "-inf", 0, OWNED_PAGE, withscores=True)
            found += [job for job in self._records([job_id for job_id, _seq in page], _NO_ANSWER)
                      if (state is None or job.state is state) and (signature is None or job.signature == signature)]
            if len(page) < OWNED_PAGE:
                break
            bound = f"({int(page[-1][1])}"
        return found[:limit]

    def _signatures(self) -> list[str]:
        return sorted(sig.decode() for sig in self.client.smembers(PREFIX + "sigs"))

    def queued_counts(self, signatures: list[str] | None = None) -> dict[str, int]:
        """QUEUED jobs per endpoint (of ``signatures``, else of all)."""
        self._flush()
        signatures = self._signatures() if signatures is None else signatures
        pipe = self.client.pipeline(transaction=False)
        for signature in signatures:
            pipe.zcard(f"{PREFIX}st:QUEUED:{signature}")
        return {signature: n for signature, n in zip(signatures, pipe.execute(), strict=True) if n}

    def claim(self, signature: str, count: int, now: float) -> list[JobRecord]:
        self._flush()
        claimed = []
        for job_id, *row in self._run("CLAIM", self.origin, self.origin, signature, count, repr(now)):
            job = _record(job_id.decode(), row[:-1])
            job.body = row[-1] or b""
            claimed.append(job)
        return claimed

    def add_items(self, job_id: str, first: int, items: list[bytes]) -> None:
        self._flush()
        self._run("ADD_ITEMS", self.origin, job_id, first, *items)  # (not deferred: an end reads them)

    def items(self, job_id: str, after: int, limit: int) -> list[bytes]:
        self._flush()
        found = self.client.hmget(PREFIX + "items:" + job_id, list(range(after, after + limit)))
        return _until_none(found)

    def finish(self, job: JobRecord, state: JobState, status: int, answer: bytes, now: float) -> bool:
        """Sent with the group's other ends (True: asked; a job cancelled meanwhile keeps its CANCELLED,
        as the script sees it)."""
        self._defer("FINISH", self.origin, job.job_id, state.value, status, answer, repr(now), job.attempts)
        return True

    def requeue(self, job: JobRecord, counted: bool) -> bool:
        self._flush()
        if not self._run("REQUEUE", self.origin, job.job_id, int(counted), job.attempts):
            return False
        job.state, job.started = JobState.QUEUED, None
        job.attempts -= 0 if counted else 1
        return True

    def cancel(self, job_id: str, now: float) -> tuple[JobRecord | None, JobState | None]:
        self._flush()
        result = self._run("CANCEL", self.origin, job_id, repr(now))
        job = self.get(job_id) if result else None
        return job, JobState(result[1].decode()) if len(result) == 2 else None

    def recover(self, max_attempts: int, now: float) -> tuple[int, int]:
        """The jobs of gateways whose lease ran out (JOB_LEASE_S without a renewal) run again here,
        or fail past JOB_MAX_ATTEMPTS. Returns (queued again, failed)."""
        self._flush()
        lost = lost_error(ATTEMPTS)
        requeued, failed = self._run("TAKEOVER", self.origin, self.origin, self.lease_ms, max_attempts, repr(now),
                                     lost, TAKEOVER_BUDGET)
        return int(requeued), int(failed)

    def renew(self, jobs: list[JobRecord]) -> list[str]:
        """Renew the leases of this gateway's running ``jobs``; the ids of those it no longer holds
        (taken over by another gateway while this one could not renew them)."""
        self._flush()
        pipe = self.client.pipeline(transaction=False)
        held = [job for job in jobs if job.entry]
        for job in held:
            pipe.xclaim(f"{PREFIX}q:{job.signature}:{job.priority}", "gw", self.origin, 0, [job.entry],
                        justid=True)
        return [job.job_id for job, kept in zip(held, pipe.execute(), strict=True) if not kept]

    def purge(self, before: float) -> int:
        self._flush()
        total = 0
        while True:
            count = int(self._run("PURGE", repr(before), 1000))
            total += count
            if count < 1000:
                return total

    # -- batches and figures ----------------------------------------------------------------------------
    def add_batch(self, batch_id: str, created: float, total: int, owner: str | None = None) -> None:
        self._flush()
        fields: dict[str, Any] = {"created": repr(created), "total": total}
        if owner is not None:
            fields["owner"] = owner
        self.client.hset(f"{PREFIX}batch:{batch_id}", mapping=fields)

    def batch(self, batch_id: str) -> tuple[float, int, dict[str, int], str | None] | None:
        self._flush()
        found = self.client.hgetall(f"{PREFIX}batch:{batch_id}")
        if not found:
            return None
        counts = {state.value: int(found.get(state.value.encode(), 0)) for state in JobState}
        return float(found[b"created"]), int(found[b"total"]), counts, _text(found.get(b"owner"))

    def batch_rows(self, batch_id: str, after: int, limit: int) -> list[tuple[int, str | None, str, bytes | None]]:
        self._flush()
        ids = self.client.lrange(f"{PREFIX}batch:{batch_id}:jobs", after, after + limit - 1)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(PREFIX + "job:" + job_id.decode(), ("bindex", "custom", "state", "answer"))
        return [(int(index), custom.decode() if custom is not None else None, state.decode(), answer)
                for index, custom, state, answer in pipe.execute() if state is not None]

    def figures(self) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        self._flush()
        signatures = self._signatures()
        pipe = self.client.pipeline(transaction=False)
        for signature in signatures:
            for state in JobState:
                pipe.zcard(f"{PREFIX}st:{state.value}:{signature}")
            pipe.zrange(f"{PREFIX}st:QUEUED:{signature}", 0, 0)
        answers = iter(pipe.execute())
        by_state, oldest_ids = {}, {}
        for signature in signatures:
            for state in JobState:
                count = next(answers)
                if count:
                    by_state[signature, state.value] = count
            first = next(answers)
            if first:
                oldest_ids[signature] = first[0]
        created = {signature: self.client.hget(PREFIX + "job:" + job_id.decode(), "created")
                   for signature, job_id in oldest_ids.items()}
        return by_state, {signature: float(when) for signature, when in created.items() if when is not None}

    # -- webhooks -----------------------------------------------------------------------------------------
    def due_webhooks(self, now: float, limit: int) -> list[JobRecord]:
        """The deliveries due, held for this gateway for WEBHOOK_HOLD seconds (no other sends them meanwhile)."""
        self._flush()
        return self._records(self._run("DUE_WEBHOOKS", repr(now), limit, WEBHOOK_HOLD))

    def delivered(self, job_id: str, attempt: dict, next_due: float | None, state: str) -> None:
        self._flush()
        self._run("DELIVERED", job_id, json.dumps(attempt), "" if next_due is None else repr(next_due), state)


def _until_none(values: list[Any]) -> list[Any]:
    out = []
    for value in values:
        if value is None:
            break
        out.append(value)
    return out


def _text(value: bytes | None) -> str | None:
    return value.decode() if value is not None else None


def _number(value: bytes | None) -> float | None:
    return float(value) if value is not None else None


def _record(job_id: str, row: list[Any]) -> JobRecord:
    (signature, state, priority, created, attempts, started, finished, webhook, status, answer, seq, wh_state,
     wh_attempts, entry, keyname) = row
    return JobRecord(job_id, signature.decode(), JobState(state.decode()), int(priority), float(created),
                     int(attempts or 0), _number(started), _number(finished), _text(webhook),
                     int(status) if status is not None else None, answer, seq=int(seq), webhook_state=_text(wh_state),
                     webhook_attempts=json.loads(wh_attempts) if wh_attempts else [], entry=_text(entry),
                     owner=_text(keyname))
