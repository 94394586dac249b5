"""The embedded job store: SQLite in WAL mode in the cache volume, large payloads in files beside it.

Every method runs on the store's own thread (:mod:`.storethread`), inside the transaction that
thread commits for a whole group of operations, so that a burst of submissions costs one
``fsync``. ``synchronous=FULL``: a committed job survives a crash of the machine, not only of
the process. A job's state changes only in :meth:`JobStore._move`.

Why not a queue library: huey, Dramatiq, arq and rq run Python functions in workers of their
own, and litequeue and persist-queue keep messages without priorities, results, idempotency keys
or listings; here the gateway itself runs each job on its model servers, so the store keeps
what ``/jobs`` answers and nothing else (see the jobs guide).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ... import jsonutil
from ...errors import ServerDied, StoreFull
from .records import NEXT, JobRecord, JobState

BLOB_AT = 256 * 1024  # bodies and answers from this size go to files beside the database
_COLUMNS = ("id, signature, state, priority, created, attempts, started, finished, webhook, status, answer, "
            "answer_file, seq, webhook_state, webhook_attempts, owner")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    signature TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    webhook TEXT,
    idempotency_key TEXT UNIQUE,
    body BLOB,
    body_file TEXT,
    status INTEGER,
    answer BLOB,
    answer_file TEXT,
    webhook_state TEXT,
    webhook_due REAL,
    webhook_attempts TEXT,
    batch_id TEXT,
    batch_index INTEGER,
    custom_id TEXT,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    total INTEGER NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (signature, priority DESC, seq) WHERE state = 'QUEUED';
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (finished) WHERE finished IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_states ON jobs (signature, state);
CREATE INDEX IF NOT EXISTS jobs_webhooks ON jobs (webhook_due) WHERE webhook_state = 'PENDING';
CREATE INDEX IF NOT EXISTS jobs_batches ON jobs (batch_id, batch_index) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owners ON jobs (owner, seq) WHERE owner IS NOT NULL;
"""
PENDING, DELIVERED, GAVE_UP = "PENDING", "DELIVERED", "GAVE_UP"  # a webhook's delivery
ADDED = {  # the columns added since the first version, by table (a store made before gets them, empty)
    "jobs": (("webhook_state", "TEXT"), ("webhook_due", "REAL"), ("webhook_attempts", "TEXT"), ("batch_id", "TEXT"),
             ("batch_index", "INTEGER"), ("custom_id", "TEXT"), ("owner", "TEXT")),
    "batches": (("owner", "TEXT"),),
}


class JobStore:
    """The jobs of one gateway (or of several on one volume, one at a time), in ``folder``."""

    shared = False  # one gateway at a time: no leases to renew, nothing told to other gateways

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.blobs = folder / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.path = folder / "jobs.db"
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._durable = True
        self._add_missing_columns()
        self.db.executescript(_SCHEMA)
        self._blob_bytes = sum(f.stat().st_size for f in self.blobs.iterdir() if f.is_file())

    def _add_missing_columns(self) -> None:
        """A store made by an earlier version gets the columns added since (they start empty)."""
        for table, columns in ADDED.items():
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if not have:
                continue  # a new table: the schema makes it
            for column, kind in columns:
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    # -- transactions (the store thread's) ------------------------------------------------------------
    def begin(self, durable: bool = True) -> None:
        """A transaction; ``durable``: its commit waits for the disk (synchronous=FULL), else for
        the file's write only (NORMAL: a crash of the process loses nothing, a power cut may)."""
        if durable != self._durable:
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> dict[int, Exception]:
        """All or nothing: no operation fails alone here (a failed COMMIT raises)."""
        self.db.execute("COMMIT")
        return {}

    def savepoint(self) -> None:
        self.db.execute("SAVEPOINT op")

    def release(self, ok: bool) -> None:
        if not ok:
            self.db.execute("ROLLBACK TO op")
        self.db.execute("RELEASE op")

    def rollback(self) -> None:
        """After a failed commit: nothing of the group holds (no transaction may be left)."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")

    @staticmethod
    def is_outage(exc: Exception) -> bool:
        """The disk, not the operation, failed (503, not 500)."""
        return isinstance(exc, (sqlite3.OperationalError, OSError))

    def close(self) -> None:
        self.db.close()

    def subscribe(self, handle: Callable[[str, list[str]], None]) -> Callable[[], None]:
        """Nothing to hear: no other gateway uses this store at the same time."""
        return lambda: None

    # -- size -------------------------------------------------------------------------------------------
    def size(self) -> int:
        """Bytes on disk: the database, its write-ahead log and the payload files."""
        total = self._blob_bytes
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total

    def check_room(self, adding: int) -> None:
        """StoreFull when ``adding`` bytes would take the store over JOB_STORE_MAX_MB."""
        if self.size() + adding > self.max_bytes:
            raise StoreFull(f"the job store holds {self.size() / 1048576:.0f} MB, its limit JOB_STORE_MAX_MB is "
                            f"{self.max_bytes / 1048576:.0f} MB: no job is accepted until finished ones expire "
                            "(JOB_TTL) or the limit is raised")

    def _put_blob(self, name: str, data: bytes) -> str:
        path = self.blobs / name
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self._blob_bytes += len(data)
        return name

    def _read_blob(self, name: str) -> bytes:
        return (self.blobs / name).read_bytes()

    def _drop_blobs(self, *names: str | None) -> None:
        for name in names:
            if name:
                path = self.blobs / name
                try:
                    self._blob_bytes -= path.stat().st_size
                    path.unlink()
                except OSError:
                    pass

    # -- operations -------------------------------------------------------------------------------------
    def submit(self, job: JobRecord, body: bytes, idempotency_key: str | None = None,
               batch: tuple[str, int, str | None] | None = None) -> tuple[JobRecord, bool]:
        """Store a new job, QUEUED, or FAILED when ``job`` comes failed already (a line of a batch
        that could not be read: ``job.status`` and ``job.answer`` say why); with an
        ``idempotency_key`` already used, the job it made instead (False: nothing new was stored).
        ``batch``: (batch id, line index, custom_id)."""
        if idempotency_key is not None:
            row = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?",
                                  (idempotency_key,)).fetchone()
            if row is not None:
                return self._record(row), False
        self.check_room(len(body) + len(job.answer or b""))
        body_file = self._put_blob(job.job_id + ".body", body) if len(body) >= BLOB_AT else None
        batch_id, index, custom_id = batch or (None, None, None)
        failed = job.state is JobState.FAILED
        cursor = self.db.execute(
            "INSERT INTO jobs (id, signature, state, priority, created, webhook, idempotency_key, body, body_file, "
            "batch_id, batch_index, custom_id, status, answer, finished, owner) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.job_id, job.signature, job.state.value, job.priority, job.created, job.webhook,
             idempotency_key, None if body_file or failed else body, body_file, batch_id, index, custom_id,
             job.status, job.answer, job.created if failed else None, job.owner))
        job.seq = cursor.lastrowid or 0
        return job, True

    def submit_many(self, jobs: list[tuple[JobRecord, bytes, tuple[str, int, str | None]]]) -> None:
        """The jobs of a batch (in the group's transaction: all or none)."""
        for job, body, batch in jobs:
            self.submit(job, body, None, batch)

    def get(self, job_id: str) -> JobRecord | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._record(row)

    def list(self, state: JobState | None, signature: str | None, limit: int, before: int | None,
             owner: str | None = None) -> list[JobRecord]:
        """The newest jobs first (``before``: a cursor, the ``seq`` of the last one listed;
        ``owner``: only the jobs of that API key's name)."""
        where, args = ["1"], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        if signature is not None:
            where.append("signature = ?")
            args.append(signature)
        if before is not None:
            where.append("seq < ?")
            args.append(before)
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
                               (*args, limit)).fetchall()
        return [self._record(row, with_answer=False) for row in rows]

    def queued_counts(self, signatures: list[str] | None = None) -> dict[str, int]:
        """QUEUED jobs per endpoint (of ``signatures``, else of all)."""
        rows = dict(self.db.execute("SELECT signature, count(*) FROM jobs WHERE state = 'QUEUED' GROUP BY signature"))
        return rows if signatures is None else {sig: n for sig, n in rows.items() if sig in signatures}

    def claim(self, signature: str, count: int, now: float) -> list[JobRecord]:
        """Up to ``count`` QUEUED jobs of ``signature``, highest priority first then oldest, made
        RUNNING (one more attempt each), with their bodies."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS}, body, body_file FROM jobs WHERE signature = ? AND state = 'QUEUED' "
            "ORDER BY priority DESC, seq LIMIT ?", (signature, count)).fetchall()
        claimed = []
        for row in rows:
            job = self._record(row[:-2], with_answer=False)
            if self._move(job, JobState.RUNNING, attempts=job.attempts + 1, started=now):
                job.body = row[-2] if row[-1] is None else self._read_blob(row[-1])
                self.db.execute("DELETE FROM job_items WHERE job_id = ?", (job.job_id,))  # an attempt lost before
                claimed.append(job)
        return claimed

    # -- the items of a job on a streaming endpoint ------------------------------------------------------
    def add_items(self, job_id: str, first: int, items: list[bytes]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO job_items (job_id, idx, data) VALUES (?, ?, ?)",
                            [(job_id, first + n, data) for n, data in enumerate(items)])

    def items(self, job_id: str, after: int, limit: int) -> list[bytes]:
        """Items ``after`` on, in order."""
        rows = self.db.execute("SELECT data FROM job_items WHERE job_id = ? AND idx >= ? ORDER BY idx LIMIT ?",
                               (job_id, after, limit))
        return [row[0] for row in rows]

    def finish(self, job: JobRecord, state: JobState, status: int, answer: bytes, now: float) -> bool:
        """A RUNNING job ended (SUCCEEDED or FAILED) with ``answer``; False when it was not RUNNING
        (cancelled meanwhile)."""
        answer_file = self._put_blob(job.job_id + ".answer", answer) if len(answer) >= BLOB_AT else None
        if self._move(job, state, status=status, answer=None if answer_file else answer, answer_file=answer_file,
                      finished=now):
            self._drop_body(job.job_id)
            self._webhook_due(job, now)
            return True
        self._drop_blobs(answer_file)
        return False

    def requeue(self, job: JobRecord, counted: bool) -> bool:
        """Back to the queue (``counted``: the attempt counts towards JOB_MAX_ATTEMPTS)."""
        return self._move(job, JobState.QUEUED, attempts=job.attempts if counted else job.attempts - 1,
                          started=None)

    def cancel(self, job_id: str, now: float) -> tuple[JobRecord | None, JobState | None]:
        """Cancel a QUEUED or RUNNING job: the record, and the state it was cancelled from (None:
        it had ended already, or there is no such job)."""
        job = self.get(job_id)
        if job is None or job.ended:
            return job, None
        was = job.state
        self._move(job, JobState.CANCELLED, finished=now)
        self._drop_body(job_id)
        self._webhook_due(job, now)
        return job, was

    def recover(self, max_attempts: int, now: float) -> tuple[int, int]:
        """At start: the jobs left RUNNING by a gateway that died run again, or fail once they
        have had JOB_MAX_ATTEMPTS attempts. Returns (requeued, failed)."""
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'RUNNING'").fetchall()
        requeued = failed = 0
        for row in rows:
            job = self._record(row, with_answer=False)
            if job.attempts < max_attempts:
                requeued += self._move(job, JobState.QUEUED, started=None)
            else:
                answer = lost_error(job.attempts)
                if self._move(job, JobState.FAILED, status=502, answer=answer, finished=now):
                    failed += 1
                    self._drop_body(job.job_id)
                    self._webhook_due(job, now)
        return requeued, failed

    def renew(self, jobs: list[JobRecord]) -> list[str]:
        """No leases here (one gateway at a time; what it left RUNNING is recovered at its start)."""
        return []

    def purge(self, before: float) -> int:
        """Forget the jobs that ended before ``before`` (JOB_TTL); how many."""
        rows = self.db.execute("SELECT id, answer_file FROM jobs WHERE finished IS NOT NULL AND finished < ?",
                               (before,)).fetchall()
        for job_id, answer_file in rows:
            self._drop_blobs(answer_file, job_id + ".body")
        self.db.execute("DELETE FROM job_items WHERE job_id IN (SELECT id FROM jobs WHERE finished IS NOT NULL "
                        "AND finished < ?)", (before,))
        self.db.execute("DELETE FROM jobs WHERE finished IS NOT NULL AND finished < ?", (before,))
        self.db.execute("DELETE FROM batches WHERE created < ? AND id NOT IN "
                        "(SELECT DISTINCT batch_id FROM jobs WHERE batch_id IS NOT NULL)", (before,))
        return len(rows)

    # -- batches and figures ------------------------------------------------------------------------------
    def add_batch(self, batch_id: str, created: float, total: int, owner: str | None = None) -> None:
        self.db.execute("INSERT INTO batches (id, created, total, owner) VALUES (?, ?, ?, ?)",
                        (batch_id, created, total, owner))

    def batch(self, batch_id: str) -> tuple[float, int, dict[str, int], str | None] | None:
        """(created, lines, jobs by state, owner) of a batch; None: no such batch."""
        row = self.db.execute("SELECT created, total, owner FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        counts = dict(self.db.execute("SELECT state, count(*) FROM jobs WHERE batch_id = ? GROUP BY state",
                                      (batch_id,)).fetchall())
        return row[0], row[1], counts, row[2]

    def batch_rows(self, batch_id: str, after: int, limit: int) -> list[tuple[int, str | None, str, bytes | None]]:
        """(line index, custom_id, state, answer) of a batch's jobs from line ``after`` on."""
        rows = self.db.execute(
            "SELECT batch_index, custom_id, state, answer, answer_file FROM jobs WHERE batch_id = ? AND "
            "batch_index >= ? ORDER BY batch_index LIMIT ?", (batch_id, after, limit)).fetchall()
        return [(index, custom_id, state, self._read_blob(answer_file) if answer is None and answer_file else answer)
                for index, custom_id, state, answer, answer_file in rows]

    def figures(self) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        """Jobs by (signature, state), and each endpoint's oldest QUEUED job's CREATED."""
        by_state = {(signature, state): n for signature, state, n in self.db.execute(
            "SELECT signature, state, count(*) FROM jobs GROUP BY signature, state")}
        oldest = dict(self.db.execute(
            "SELECT signature, min(created) FROM jobs WHERE state = 'QUEUED' GROUP BY signature").fetchall())
        return by_state, oldest

    # -- webhooks ---------------------------------------------------------------------------------------
    def _webhook_due(self, job: JobRecord, now: float) -> None:
        if job.webhook:
            self.db.execute("UPDATE jobs SET webhook_state = ?, webhook_due = ? WHERE id = ?",
                            (PENDING, now, job.job_id))
            job.webhook_state = PENDING

    def due_webhooks(self, now: float, limit: int) -> list[JobRecord]:
        """Jobs whose webhook delivery is due, with their answers (the payload)."""
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE webhook_state = ? AND webhook_due <= ? "
                               "ORDER BY webhook_due LIMIT ?", (PENDING, now, limit)).fetchall()
        return [self._record(row) for row in rows]

    def delivered(self, job_id: str, attempt: dict, next_due: float | None, state: str) -> None:
        """Record a delivery attempt; ``next_due``: when to try again (PENDING), else ``state``."""
        row = self.db.execute("SELECT webhook_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return  # purged meanwhile
        attempts = [*json.loads(row[0] or "[]"), attempt]
        self.db.execute("UPDATE jobs SET webhook_attempts = ?, webhook_state = ?, webhook_due = ? WHERE id = ?",
                        (json.dumps(attempts), PENDING if next_due is not None else state, next_due, job_id))

    # -- the one place a state changes ----------------------------------------------------------------
    def _move(self, job: JobRecord, target: JobState, **changes: object) -> bool:
        """``job`` to ``target`` when its stored state allows it (:data:`.records.NEXT`), with
        the other ``changes`` of its columns; ``job`` is updated to match. False: nothing changed."""
        allowed = [state.value for state, nexts in NEXT.items() if target in nexts]
        columns = ", ".join(f"{name} = ?" for name in changes)
        cursor = self.db.execute(
            f"UPDATE jobs SET state = ?{', ' + columns if columns else ''} WHERE id = ? AND state IN "
            f"({', '.join('?' * len(allowed))})", (target.value, *changes.values(), job.job_id, *allowed))
        if cursor.rowcount != 1:
            return False
        job.state = target
        for name, value in changes.items():
            if name == "answer_file":
                continue
            if name == "answer" and value is None and changes.get("answer_file"):
                value = self._read_blob(str(changes["answer_file"]))
            setattr(job, name, value)
        return True

    def _drop_body(self, job_id: str) -> None:
        row = self.db.execute("SELECT body_file FROM jobs WHERE id = ?", (job_id,)).fetchone()
        self.db.execute("UPDATE jobs SET body = NULL, body_file = NULL WHERE id = ?", (job_id,))
        if row is not None:
            self._drop_blobs(row[0])

    def _record(self, row: tuple, with_answer: bool = True) -> JobRecord:
        (job_id, signature, state, priority, created, attempts, started, finished, webhook, status, answer,
         answer_file, seq, webhook_state, webhook_attempts, owner) = row
        if with_answer and answer is None and answer_file:
            answer = self._read_blob(answer_file)
        return JobRecord(job_id, signature, JobState(state), priority, created, attempts, started, finished, webhook,
                         status, answer if with_answer else None, seq=seq, webhook_state=webhook_state,
                         webhook_attempts=json.loads(webhook_attempts) if webhook_attempts else [], owner=owner)


def lost_error(attempts: int | str) -> bytes:
    message = f"the job was lost {attempts} times (its gateway or model server died while it ran): JOB_MAX_ATTEMPTS"
    return jsonutil.dumps_bytes(ServerDied(message).to_body())
