"""One job queue for many gateways: two real gateways on one real Redis (``JOB_STORE``).

Any gateway answers for any job (reads, ``?wait``, cancels, event streams), a job queued on one
runs on whichever has a spare place, a long job keeps its lease while its gateway lives, and when
a gateway is SIGKILLed with jobs running, the other takes them over once their lease runs out:
nothing is lost, and only the jobs that were running run again.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import ECHO_CONFIG, Gateway
from test_jobs import sse_events, submit, wait_job

from basic_inference_server.gateway.jobs.records import JobRecord, JobState, new_job_id
from basic_inference_server.gateway.jobs.redisstore import RedisStore
from basic_inference_server.gateway.jobs.storethread import StoreThread

pytestmark = pytest.mark.integration

ENDPOINTS = {
    "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 10},
    "stream": {"SERVER_CLASS": "stream_model", "NR_WORKERS": 1},
}


def config(store: str, lease: float, runs_jobs: bool = True) -> dict:
    """A gateway on ``store``; ``runs_jobs`` False: its endpoints are disabled, so it only reads,
    waits for, cancels and follows the jobs the other runs."""
    endpoints = {name: {**entry, "DISABLED": not runs_jobs} for name, entry in ENDPOINTS.items()}
    return {**ECHO_CONFIG, "JOB_STORE": store, "JOB_LEASE_S": lease, "CONFIG_ENDPOINTS": endpoints}


def wait_status(gateway: Gateway, job_id: str, status: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while gateway.get(f"/jobs/{job_id}").json()["STATUS"] != status:
        assert time.monotonic() < deadline, f"{job_id} not {status} after {timeout}s"
        time.sleep(0.02)


def test_any_gateway_reads_waits_for_cancels_and_follows_the_jobs_the_other_runs(redis_server, gateway_factory):
    store = redis_server.url()
    runner = gateway_factory(config(store, 5))
    reader = gateway_factory(config(store, 5, runs_jobs=False))
    # A job queued on the runner is read on the reader, whose long-poll wakes when it ends there.
    job = submit(runner, {"SIGNATURE": "echo", "VALUE": "shared", "SLEEP": 0.6}).json()
    assert reader.get(f"/jobs/{job['JOB_ID']}").json()["SIGNATURE"] == "echo"
    started = time.monotonic()
    done = wait_job(reader, job["JOB_ID"], 20)
    assert done["STATUS"] == "SUCCEEDED" and done["RESULT"]["predict_result"]["echo"] == "shared"
    assert time.monotonic() - started < 5  # woken by the end, not by the 20 s of the wait
    assert reader.get("/jobs", params={"signature": "echo"}).json()["JOBS"][0]["JOB_ID"] == job["JOB_ID"]
    # The reader cancels jobs running on the runner: they stay cancelled when their hooks return there.
    long = [submit(runner, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 1.5}).json()["JOB_ID"] for i in range(2)]
    for job_id in long:
        wait_status(reader, job_id, "RUNNING")
    for job_id in long:
        cancelled = reader.session.delete(f"{reader.url}/jobs/{job_id}", timeout=5)
        assert cancelled.status_code == 200 and cancelled.json()["STATUS"] == "CANCELLED"
    quick = submit(runner, {"SIGNATURE": "echo", "VALUE": "next"}).json()["JOB_ID"]
    assert wait_job(reader, quick, 10)["STATUS"] == "SUCCEEDED"  # (once a worker is back from its sleep)
    for job_id in long:
        ended = runner.get(f"/jobs/{job_id}").json()
        assert ended["STATUS"] == "CANCELLED" and "RESULT" not in ended
    # The reader follows a streaming job the runner runs: the items kept, then each new one, then the end.
    streaming = submit(runner, {"SIGNATURE": "stream", "N": 6, "GAP_MS": 150}).json()["JOB_ID"]
    wait_status(reader, streaming, "RUNNING")
    with reader.session.get(f"{reader.url}/jobs/{streaming}/events", stream=True, timeout=15) as events:
        seen = sse_events(events)
    assert [data["i"] for kind, data in seen if kind == "message"] == list(range(6))
    assert seen[-1][0] == "end" and seen[-1][1]["STATUS"] == "SUCCEEDED"
    # The reader's own endpoints are off: it refuses new jobs for them (it could never run them).
    assert submit(reader, {"SIGNATURE": "echo", "VALUE": 1}).status_code == 404


def test_jobs_queued_on_one_gateway_are_claimed_by_the_other_at_once(redis_server, gateway_factory):
    """The other gateway hears of the jobs queued (JOB_LEASE_S 30: its own look at the queue comes
    7.5 s or more after its start), and runs them on its free workers at once."""
    store = redis_server.url()
    first = gateway_factory(config(store, 30))
    second = gateway_factory(config(store, 30))
    # 1.5 s of work per job for 2 workers: alone, one gateway would need 3 s; both run them.
    ids = [submit(first, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 1.5}).json()["JOB_ID"] for i in range(4)]
    started = time.monotonic()
    jobs = [wait_job(second, job_id, 20) for job_id in ids]
    assert [job["STATUS"] for job in jobs] == ["SUCCEEDED"] * 4
    assert time.monotonic() - started < 2.8


def test_a_job_longer_than_its_lease_keeps_it_while_its_gateway_lives(redis_server, gateway_factory):
    store = redis_server.url()
    first = gateway_factory(config(store, 1))
    second = gateway_factory(config(store, 1))
    ids = [submit(first, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 3}).json()["JOB_ID"] for i in range(2)]
    jobs = [wait_job(second, job_id, 20) for job_id in ids]
    # Each ran once: its gateway renewed its lease (1 s) through the 3 s it took; none was taken over.
    assert [(job["STATUS"], job["ATTEMPTS"]) for job in jobs] == [("SUCCEEDED", 1)] * 2


def test_a_sigkilled_gateways_running_jobs_are_taken_over_by_the_other(redis_server, gateway_factory):
    """The crash test on a shared queue: one gateway and its servers SIGKILLed with jobs running
    and queued; the other runs every job once the dead one's leases run out. 0 lost, all
    SUCCEEDED, re-runs at most the jobs that were running on the dead gateway."""
    store = redis_server.url()
    doomed = gateway_factory(config(store, 2))
    ids = [submit(doomed, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 0.3}).json()["JOB_ID"] for i in range(60)]
    survivor = gateway_factory(config(store, 2))  # (meanwhile the doomed one runs them, 2 at a time)
    deadline = time.monotonic() + 5
    while sum(survivor.get(f"/jobs/{job_id}").json()["STATUS"] == "RUNNING" for job_id in ids[-20:]) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait(5)
    # What was RUNNING at the kill (the dead gateway's stay so until their leases run out, 2 s).
    running = {job["JOB_ID"] for job in survivor.get("/jobs", params={"status": "RUNNING"}).json()["JOBS"]}
    jobs = [wait_job(survivor, job_id, 30) for job_id in ids]
    assert [job["STATUS"] for job in jobs] == ["SUCCEEDED"] * 60
    rerun = [job for job in jobs if job["ATTEMPTS"] > 1]
    assert 1 <= len(rerun) <= 2  # the doomed gateway's 2 workers' jobs, at most
    assert all(job["ATTEMPTS"] == 2 and job["JOB_ID"] in running for job in rerun)
    assert survivor.run("echo", VALUE=1).status_code == 200


def test_redis_gone_is_a_503_for_jobs_only_and_its_jobs_are_there_when_it_is_back(redis_server, gateway_factory,
                                                                                  tmp_path):
    """Redis stopped: job routes answer 503 (JSON, at once), /run goes on; Redis restarted on its
    append-only file: the jobs answered 202 before are there, and new ones run."""
    from bench.redisserver import RedisServer

    own = RedisServer(redis_server.binary, tmp_path / "redis").start()
    try:
        gateway = gateway_factory(config(own.url(), 2))
        kept = submit(gateway, {"SIGNATURE": "echo", "VALUE": "kept"}).json()["JOB_ID"]
        assert wait_job(gateway, kept)["STATUS"] == "SUCCEEDED"
        own.stop()
        started = time.monotonic()
        refused = submit(gateway, {"SIGNATURE": "echo", "VALUE": 1})
        assert refused.status_code == 503 and "job store" in refused.json()["ERROR"]
        assert gateway.get(f"/jobs/{kept}").status_code == 503
        assert time.monotonic() - started < 5
        assert gateway.run("echo", VALUE=1).status_code == 200  # interactive traffic does not need Redis
        own.start()
        assert wait_job(gateway, kept)["RESULT"]["predict_result"]["echo"] == "kept"
        again = submit(gateway, {"SIGNATURE": "echo", "VALUE": "again"})
        assert again.status_code == 202 and wait_job(gateway, again.json()["JOB_ID"])["STATUS"] == "SUCCEEDED"
    finally:
        own.stop()


def test_a_redis_with_a_password_from_a_secret_file_and_the_address_from_the_environment(redis_server,
                                                                                         gateway_factory, tmp_path):
    """BIS_JOB_STORE overrides JOB_STORE (the deployment's Redis); its password comes only from the
    environment (here a secret file); without it, job routes answer 503 and say why."""
    from bench.redisserver import RedisServer

    own = RedisServer(redis_server.binary, tmp_path / "redis", password="s3cret-pass").start()
    try:
        secret = tmp_path / "redis_password"
        secret.write_text("s3cret-pass\n")
        env = {"BIS_JOB_STORE": own.url(), "BIS_JOB_STORE_PASSWORD_FILE": str(secret)}
        gateway = gateway_factory(config("sqlite", 2), env=env)
        job = submit(gateway, {"SIGNATURE": "echo", "VALUE": "authenticated"})
        assert job.status_code == 202 and wait_job(gateway, job.json()["JOB_ID"])["STATUS"] == "SUCCEEDED"
        refused = gateway_factory(config("sqlite", 2), env={"BIS_JOB_STORE": own.url()})
        answer = submit(refused, {"SIGNATURE": "echo", "VALUE": 1})
        assert answer.status_code == 503 and "auth" in answer.json()["ERROR"].lower()
        assert refused.run("echo", VALUE=1).status_code == 200
        assert "s3cret-pass" not in gateway.output() + refused.output()
    finally:
        own.stop()


def test_a_write_redis_refuses_at_the_commit_fails_its_own_operation_only(redis_server):
    """Submissions are sent together at the group's commit: one that Redis refuses fails alone,
    the others of the group are stored and answered as such (a client told 503 for a job that was
    stored would submit it twice)."""
    store = RedisStore(redis_server.url(), None, 64 * 2**20, 30)
    jobs = [JobRecord(new_job_id(), "echo", JobState.QUEUED, 5, time.time()) for _ in range(3)]

    def submitting(job):
        return lambda s: s.submit(job, b'{"VALUE": 1}')[0].job_id

    store._scripts["REFUSED"] = store.client.register_script("return redis.error_reply('refused here')")

    def refused(s):
        s._defer("REFUSED")  # a deferred write Redis answers with an error
        return "refused"

    ops = [(submitting(jobs[0]), None, True), (refused, None, True), (submitting(jobs[1]), None, True),
           (lambda s: s.get(jobs[1].job_id).job_id, None, True), (submitting(jobs[2]), None, True)]
    try:
        results = StoreThread._commit(store, ops)
        assert [result for _done, result, _error in results] == [jobs[0].job_id, None, jobs[1].job_id,
                                                                  jobs[1].job_id, jobs[2].job_id]
        assert results[1][2].status in (500, 503) and "job store error" in results[1][2].message
        assert all(store.get(job.job_id).state is JobState.QUEUED for job in jobs)
    finally:
        store.close()
