"""API keys on the durable jobs (/jobs, /batches, /run with Prefer: respond-async), through a
real gateway on each job store: 401 without a valid key, 403 for an endpoint the key may not
call, 429 past its RPS, a job's submission (not its run) held in the key's CONCURRENCY; each job
and batch its key's (404 for another key, the listing filtered) and the admin token's; jobs of
keys off without an owner (the admin token's alone once keys are on), and an embedded store made
before owners existed taken as it is."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
import requests
from conftest import ECHO_CONFIG, TOKEN, Gateway, make_app

from basic_inference_server.apikeyfile import hash_of

pytestmark = pytest.mark.integration

KEYS = {"alice": "bis_alice-jobs-key-0001", "bob": "bis_bob-jobs-key-0002", "echo_only": "bis_echo-only-jobs-0003",
        "slow": "bis_one-per-two-seconds-0004", "single": "bis_one-in-flight-jobs-0005"}
ENTRIES = [
    {"NAME": "alice", "SHA256": hash_of(KEYS["alice"])},
    {"NAME": "bob", "SHA256": hash_of(KEYS["bob"])},
    {"NAME": "echo_only", "SHA256": hash_of(KEYS["echo_only"]), "ENDPOINTS": ["echo"]},
    {"NAME": "slow", "SHA256": hash_of(KEYS["slow"]), "RPS": 0.5, "BURST": 1},
    {"NAME": "single", "SHA256": hash_of(KEYS["single"]), "CONCURRENCY": 1},
]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NDJSON = {"Content-Type": "application/x-ndjson"}


def as_key(name: str, header: str = "X-API-Key") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"} if header == "Authorization" else {"X-API-Key": KEYS[name]}


def keys_file(folder) -> str:
    path = folder / "api_keys.json"
    path.write_text(json.dumps({"KEYS": ENTRIES}))
    return str(path)


def start(app, store: str, keyed: bool) -> Gateway:
    env = {"BIS_API_KEYS_FILE": keys_file(app.parent)} if keyed else {}
    (app / "config_gateway.txt").write_text(json.dumps({**ECHO_CONFIG, "JOB_STORE": store}))
    return Gateway(app, env=env).start()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gateway(request, tmp_path_factory):
    """A gateway with keys on, on each job store (every test of this module runs on both)."""
    store = request.getfixturevalue("redis_server").url() if request.param == "redis" else "sqlite"
    started = start(make_app(tmp_path_factory.mktemp("keyed-jobs"), ECHO_CONFIG), store, keyed=True)
    yield started
    started.stop()
    started.assert_nothing_left()


def submit(gateway: Gateway, headers: dict[str, str], **body) -> requests.Response:
    return gateway.session.post(gateway.url + "/jobs", json={"SIGNATURE": "echo", "VALUE": 1, **body},
                                headers=headers, timeout=10)


def job_of(gateway: Gateway, headers: dict[str, str], **body) -> str:
    answer = submit(gateway, headers, **body)
    assert answer.status_code == 202, answer.text
    return answer.json()["JOB_ID"]


def get(gateway: Gateway, path: str, headers: dict[str, str] | None = None, **params) -> requests.Response:
    return gateway.session.get(gateway.url + path, headers=headers or {}, params=params, timeout=15)


def listed(gateway: Gateway, headers: dict[str, str]) -> set[str]:
    answer = get(gateway, "/jobs", headers, limit=1000)
    assert answer.status_code == 200, answer.text
    return {job["JOB_ID"] for job in answer.json()["JOBS"]}


def batch_of(gateway: Gateway, headers: dict[str, str], lines: list[dict]) -> dict:
    answer = gateway.session.post(gateway.url + "/batches", data="\n".join(json.dumps(line) for line in lines),
                                  headers={**NDJSON, **headers}, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()


def finished_batch(gateway: Gateway, batch_id: str, headers: dict[str, str]) -> list[dict]:
    deadline = time.monotonic() + 15
    while get(gateway, f"/batches/{batch_id}", headers).json()["STATUS"] != "COMPLETED":
        assert time.monotonic() < deadline, "the batch did not finish"
        time.sleep(0.05)
    results = get(gateway, f"/batches/{batch_id}/results", headers)
    assert results.status_code == 200, results.text
    return [json.loads(line) for line in results.text.splitlines()]


def test_every_jobs_and_batches_route_needs_a_valid_key(gateway):
    job_id = job_of(gateway, as_key("alice"))
    batch_id = batch_of(gateway, as_key("alice"), [{"SIGNATURE": "echo", "VALUE": 1}])["BATCH_ID"]
    session, url = gateway.session, gateway.url
    for wrong in ({}, {"X-API-Key": "bis_not-a-key"}, {"Authorization": "Bearer bis_not-a-key"}):
        answers = {
            "POST /jobs": submit(gateway, wrong),
            "POST /run respond-async": session.post(url + "/run", json={"SIGNATURE": "echo", "VALUE": 1},
                                                    headers={"Prefer": "respond-async", **wrong}, timeout=10),
            "GET /jobs": get(gateway, "/jobs", wrong),
            "GET /jobs/<id>": get(gateway, f"/jobs/{job_id}", wrong),
            "GET /jobs/<id>?wait": get(gateway, f"/jobs/{job_id}", wrong, wait=1),
            "GET /jobs/<id>/events": get(gateway, f"/jobs/{job_id}/events", wrong),
            "DELETE /jobs/<id>": session.delete(f"{url}/jobs/{job_id}", headers=wrong, timeout=10),
            "POST /batches": session.post(url + "/batches", data=b'{"SIGNATURE": "echo", "VALUE": 1}',
                                          headers={**NDJSON, **wrong}, timeout=10),
            "GET /batches/<id>": get(gateway, f"/batches/{batch_id}", wrong),
            "GET /batches/<id>/results": get(gateway, f"/batches/{batch_id}/results", wrong),
        }
        refused = {route: answer.status_code for route, answer in answers.items() if answer.status_code != 401}
        assert refused == {}, f"{wrong}: {refused}"
        assert "API key" in answers["GET /jobs"].json()["ERROR"]
    assert get(gateway, f"/jobs/{job_id}", as_key("alice", "Authorization"), wait=10).json()["STATUS"] == "SUCCEEDED"


def test_a_job_is_its_keys_and_the_admin_tokens_another_key_gets_404(gateway):
    alices = job_of(gateway, as_key("alice", "Authorization"), SLEEP=0.5)
    bobs = job_of(gateway, as_key("bob"))
    done = get(gateway, f"/jobs/{alices}", as_key("alice"), wait=10)
    assert done.status_code == 200 and done.json()["STATUS"] == "SUCCEEDED"
    assert done.json()["OWNER"] == "alice" and KEYS["alice"] not in done.text  # the key's name, never the key
    session, url = gateway.session, gateway.url
    unknown = get(gateway, "/jobs/job_nope", as_key("bob"))
    assert unknown.status_code == 404
    for answer in (get(gateway, f"/jobs/{alices}", as_key("bob")),
                   get(gateway, f"/jobs/{alices}", as_key("bob"), wait=5),
                   get(gateway, f"/jobs/{alices}/events", as_key("bob")),
                   session.delete(f"{url}/jobs/{alices}", headers=as_key("bob"), timeout=10)):
        assert answer.status_code == 404, answer.text
        assert answer.json()["ERROR"] == unknown.json()["ERROR"].replace("job_nope", alices)  # as if not there
    assert alices in listed(gateway, as_key("alice")) and bobs not in listed(gateway, as_key("alice"))
    assert bobs in listed(gateway, as_key("bob")) and alices not in listed(gateway, as_key("bob"))
    assert {alices, bobs} <= listed(gateway, ADMIN)  # the admin token sees every key's
    mine = get(gateway, "/jobs", as_key("alice"), status="SUCCEEDED", signature="echo").json()["JOBS"]
    assert mine and {job["OWNER"] for job in mine} == {"alice"}  # filtered by state and endpoint too
    seen = get(gateway, f"/jobs/{alices}", ADMIN)
    assert seen.status_code == 200 and seen.json()["OWNER"] == "alice"
    with session.get(f"{url}/jobs/{alices}/events", headers=as_key("alice"), stream=True, timeout=10) as events:
        assert events.status_code == 200 and b"event: end" in b"".join(events.iter_content(None))
    assert KEYS["alice"] not in gateway.output() and KEYS["bob"] not in gateway.output()


def test_only_its_key_or_the_admin_token_cancels_a_job(gateway):
    running = job_of(gateway, as_key("alice"), SLEEP=1)
    assert gateway.session.delete(f"{gateway.url}/jobs/{running}", headers=as_key("bob"), timeout=10).status_code == 404
    assert get(gateway, f"/jobs/{running}", as_key("alice"), wait=10).json()["STATUS"] == "SUCCEEDED"  # not cancelled
    for canceller in ("alice", "admin"):
        job_id = job_of(gateway, as_key("alice"), SLEEP=1)
        cancelled = gateway.session.delete(f"{gateway.url}/jobs/{job_id}", timeout=10,
                                           headers=ADMIN if canceller == "admin" else as_key("alice"))
        assert cancelled.status_code == 200 and cancelled.json()["STATUS"] == "CANCELLED", canceller


def test_a_key_submits_jobs_only_to_its_endpoints_and_the_admin_token_submits_none(gateway):
    assert submit(gateway, as_key("echo_only")).status_code == 202
    forbidden = submit(gateway, as_key("echo_only"), SIGNATURE="echo_b")
    assert forbidden.status_code == 403 and "echo_b" in forbidden.json()["ERROR"]
    assert 'bis_api_key_requests_total{key="echo_only",outcome="forbidden"}' in gateway.get("/metrics").text
    unknown = submit(gateway, as_key("echo_only"), SIGNATURE="nope")
    assert unknown.status_code == 403 and "echo_b" not in unknown.text  # the endpoints are not listed to it
    admin = submit(gateway, ADMIN)
    assert admin.status_code == 401 and "admin token is no API key" in admin.json()["ERROR"]
    batch = batch_of(gateway, as_key("echo_only"), [{"SIGNATURE": "echo", "VALUE": 1, "custom_id": "ok"},
                                                     {"SIGNATURE": "echo_b", "VALUE": 2, "custom_id": "no"}])
    rows = {row["custom_id"]: row for row in finished_batch(gateway, batch["BATCH_ID"], as_key("echo_only"))}
    assert rows["ok"]["status"] == "SUCCEEDED"
    assert rows["no"]["status"] == "FAILED" and "line 2" in rows["no"]["error"]["ERROR"]
    assert "may not call 'echo_b'" in rows["no"]["error"]["ERROR"]


def test_past_its_rps_a_submission_gets_429_and_its_concurrency_holds_the_submission_only(gateway):
    assert submit(gateway, as_key("slow")).status_code == 202
    limited = submit(gateway, as_key("slow"))
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    batch = gateway.session.post(gateway.url + "/batches", data=b'{"SIGNATURE": "echo", "VALUE": 1}',
                                 headers={**NDJSON, **as_key("slow")}, timeout=10)
    assert batch.status_code == 429  # a batch is one request of its key
    first = job_of(gateway, as_key("single"), SLEEP=1.5)
    second = job_of(gateway, as_key("single"))  # the first runs: its key's one place is free again
    assert get(gateway, f"/jobs/{first}", as_key("single")).json()["STATUS"] in ("QUEUED", "RUNNING")
    assert gateway.session.post(gateway.url + "/run", json={"SIGNATURE": "echo", "VALUE": 1},
                                headers=as_key("single"), timeout=10).status_code == 200
    for job_id in (first, second):
        assert get(gateway, f"/jobs/{job_id}", as_key("single"), wait=10).json()["STATUS"] == "SUCCEEDED"


def test_a_batch_is_its_keys_and_the_admin_tokens(gateway):
    batch = batch_of(gateway, as_key("alice"), [{"SIGNATURE": "echo", "VALUE": i, "custom_id": f"c{i}"}
                                                for i in range(2)])
    batch_id = batch["BATCH_ID"]
    assert batch["OWNER"] == "alice"
    rows = finished_batch(gateway, batch_id, as_key("alice"))
    assert [row["custom_id"] for row in rows] == ["c0", "c1"] and {row["status"] for row in rows} == {"SUCCEEDED"}
    for path in (f"/batches/{batch_id}", f"/batches/{batch_id}/results"):
        assert get(gateway, path, as_key("bob")).status_code == 404, path
        assert get(gateway, path, ADMIN).status_code == 200, path
    bobs = listed(gateway, as_key("bob"))
    alices = {job["JOB_ID"] for job in get(gateway, "/jobs", as_key("alice"), limit=1000).json()["JOBS"]
              if job["OWNER"] == "alice"}
    assert alices and not alices & bobs  # the batch's jobs are its key's too


def test_an_idempotency_key_is_each_api_keys_own(gateway):
    first = submit(gateway, {**as_key("alice"), "Idempotency-Key": "order-7"})
    again = submit(gateway, {**as_key("alice"), "Idempotency-Key": "order-7"})
    other = submit(gateway, {**as_key("bob"), "Idempotency-Key": "order-7"})
    assert first.status_code == 202 and again.status_code == 200 and other.status_code == 202
    assert again.json()["JOB_ID"] == first.json()["JOB_ID"] != other.json()["JOB_ID"]
    assert other.json()["OWNER"] == "bob"


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_keys_off_change_nothing_and_their_jobs_are_the_admin_tokens_once_keys_are_on(request, tmp_path, store):
    url = request.getfixturevalue("redis_server").url() if store == "redis" else "sqlite"
    app = make_app(tmp_path, ECHO_CONFIG)
    off = start(app, url, keyed=False)
    try:
        answer = submit(off, as_key("alice"))  # the key is ignored: not even looked at
        assert answer.status_code == 202 and "OWNER" not in answer.json()
        old = answer.json()["JOB_ID"]
        assert get(off, f"/jobs/{old}", wait=10).json()["STATUS"] == "SUCCEEDED"
        assert old in listed(off, {})
        batch = batch_of(off, {}, [{"SIGNATURE": "echo", "VALUE": 1}])
        assert "OWNER" not in batch
    finally:
        off.stop()
        off.assert_nothing_left()
    on = start(app, url, keyed=True)
    try:
        assert get(on, f"/jobs/{old}", as_key("alice")).status_code == 404
        assert get(on, f"/batches/{batch['BATCH_ID']}", as_key("alice")).status_code == 404
        assert old not in listed(on, as_key("alice"))
        assert get(on, f"/jobs/{old}", ADMIN).json()["STATUS"] == "SUCCEEDED" and old in listed(on, ADMIN)
        assert get(on, f"/batches/{batch['BATCH_ID']}", ADMIN).status_code == 200
    finally:
        on.stop()
        on.assert_nothing_left()


OLD_SCHEMA = """
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, signature TEXT NOT NULL,
    state TEXT NOT NULL, priority INTEGER NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, webhook TEXT, idempotency_key TEXT UNIQUE, body BLOB, body_file TEXT,
    status INTEGER, answer BLOB, answer_file TEXT, webhook_state TEXT, webhook_due REAL, webhook_attempts TEXT,
    batch_id TEXT, batch_index INTEGER, custom_id TEXT);
CREATE TABLE batches (id TEXT PRIMARY KEY, created REAL NOT NULL, total INTEGER NOT NULL);
INSERT INTO batches VALUES ('batch_old', 1700000000.0, 1);
INSERT INTO jobs (id, signature, state, priority, created, attempts, started, finished, status, answer, batch_id,
                  batch_index)
    VALUES ('job_old', 'echo', 'SUCCEEDED', 5, 1700000000.0, 1, 1700000000.5, 1700000001.0, 200,
            CAST('{"predict_result": {"echo": "before"}}' AS BLOB), 'batch_old', 0);
"""


def test_an_embedded_store_made_before_owners_gets_them_and_keeps_its_jobs(tmp_path):
    app = make_app(tmp_path, ECHO_CONFIG)
    folder = app / "_cache" / "_data" / "jobs"
    folder.mkdir(parents=True)
    with sqlite3.connect(folder / "jobs.db") as db:
        db.executescript(OLD_SCHEMA)
    gateway = start(app, "sqlite", keyed=True)
    try:
        old = get(gateway, "/jobs/job_old", ADMIN)
        assert old.status_code == 200 and old.json()["RESULT"]["predict_result"]["echo"] == "before"
        assert "OWNER" not in old.json()
        assert get(gateway, "/jobs/job_old", as_key("alice")).status_code == 404
        assert get(gateway, "/batches/batch_old", as_key("alice")).status_code == 404
        assert get(gateway, "/batches/batch_old", ADMIN).json()["COUNTS"]["SUCCEEDED"] == 1
        new = job_of(gateway, as_key("alice"))
        assert get(gateway, f"/jobs/{new}", as_key("alice"), wait=10).json()["OWNER"] == "alice"
        assert listed(gateway, as_key("alice")) == {new} and {new, "job_old"} <= listed(gateway, ADMIN)
    finally:
        gateway.stop()
        gateway.assert_nothing_left()
    with sqlite3.connect(folder / "jobs.db") as db:
        assert "owner" in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        assert "owner" in {row[1] for row in db.execute("PRAGMA table_info(batches)")}
