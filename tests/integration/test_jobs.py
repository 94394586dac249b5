"""Durable jobs through a real gateway: submit, read, wait, list, cancel, idempotency, errors,
interactive traffic first, and a SIGKILL of the whole process group with jobs queued and running."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests
from conftest import ECHO_CONFIG, Gateway, make_app

pytestmark = pytest.mark.integration

CONFIG = {**ECHO_CONFIG, "CONFIG_ENDPOINTS": {
    "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 5, "PREFIX": "e1"},
    "echo_off": {"SERVER_CLASS": "echo_model", "DISABLED": True},
}}


def submit(gateway: Gateway, body: dict, **headers: str) -> requests.Response:
    return gateway.session.post(gateway.url + "/jobs", json=body, headers=headers, timeout=10)


def wait_job(gateway: Gateway, job_id: str, seconds: float = 10) -> dict:
    answer = gateway.session.get(f"{gateway.url}/jobs/{job_id}", params={"wait": seconds}, timeout=seconds + 5)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def jobs_gateway(tmp_path_factory):
    gateway = Gateway(make_app(tmp_path_factory.mktemp("jobs"), CONFIG)).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


def test_a_job_runs_and_its_result_is_what_run_answers(jobs_gateway):
    answer = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": 7, "PRIORITY": 9})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["STATUS"] == "QUEUED" and job["JOB_ID"].startswith("job_") and job["PRIORITY"] == 9
    assert answer.headers["Location"] == f"/jobs/{job['JOB_ID']}"
    done = wait_job(jobs_gateway, job["JOB_ID"])
    assert done["STATUS"] == "SUCCEEDED" and done["ATTEMPTS"] == 1
    assert done["CREATED"].endswith("Z") and done["STARTED"] and done["FINISHED"]
    direct = jobs_gateway.run("echo", VALUE=7).json()
    assert done["RESULT"].keys() == direct.keys()  # the /run answer, envelope and all
    assert done["RESULT"]["predict_result"]["echo"] == 7  # the job's own fields never reached the hooks (VALUE only)


def test_prefer_respond_async_on_run_makes_a_job(jobs_gateway):
    answer = jobs_gateway.session.post(jobs_gateway.url + "/run", json={"SIGNATURE": "echo", "VALUE": "later"},
                                       headers={"Prefer": "respond-async"}, timeout=10)
    assert answer.status_code == 202, answer.text
    assert wait_job(jobs_gateway, answer.json()["JOB_ID"])["RESULT"]["predict_result"]["echo"] == "later"


def test_an_idempotency_key_returns_the_same_job_never_a_second_run(jobs_gateway):
    first = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": 1}, **{"Idempotency-Key": "order-42"})
    again = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": 1}, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["JOB_ID"] == first.json()["JOB_ID"]


def test_a_failing_job_keeps_the_error_and_is_not_retried(jobs_gateway):
    job = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": 1, "FAIL": True}).json()
    done = wait_job(jobs_gateway, job["JOB_ID"])
    assert done["STATUS"] == "FAILED" and done["ATTEMPTS"] == 1
    assert "model exploded" in done["ERROR"]["ERROR"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"SIGNATURE": "nope", "VALUE": 1}, 404, "Bad signature"),
    ({"SIGNATURE": "echo_off", "VALUE": 1}, 404, "disabled"),
    ({"VALUE": 1}, 400, "SIGNATURE"),
    ({"SIGNATURE": "echo", "PRIORITY": 10}, 400, "PRIORITY"),
    ({"SIGNATURE": "echo", "PRIORITY": "high"}, 400, "PRIORITY"),
    ({"SIGNATURE": "echo", "WEBHOOK": "ftp://x"}, 400, "WEBHOOK"),
    ([1, 2], 400, "must be an object"),
])
def test_bad_submissions_are_clear_errors(jobs_gateway, body, status, words):
    answer = submit(jobs_gateway, body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["ERROR"]


def test_unknown_jobs_bad_queries_and_methods(jobs_gateway):
    session, url = jobs_gateway.session, jobs_gateway.url
    assert session.get(url + "/jobs/job_nope", timeout=5).status_code == 404
    assert session.delete(url + "/jobs/job_nope", timeout=5).status_code == 404
    assert session.get(url + "/jobs/x", params={"wait": "soon"}, timeout=5).status_code == 400
    assert session.get(url + "/jobs", params={"status": "LOST"}, timeout=5).status_code == 400
    assert session.get(url + "/jobs", params={"limit": "0"}, timeout=5).status_code == 400
    refused = session.put(url + "/jobs", timeout=5)
    assert refused.status_code == 405 and "POST" in refused.headers["Allow"]
    assert session.get(url + "/jobs/a/b", timeout=5).status_code == 404
    assert jobs_gateway.run("echo", VALUE=1).status_code == 200  # nothing else broke


def test_cancel_a_queued_and_a_running_job_and_409_once_ended(jobs_gateway):
    running = [submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 1.5}).json() for i in range(2)]
    queued = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": "q", "PRIORITY": 0}).json()
    deadline = time.monotonic() + 5
    while jobs_gateway.get(f"/jobs/{running[0]['JOB_ID']}").json()["STATUS"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for job in (queued, running[0]):
        cancelled = jobs_gateway.session.delete(f"{jobs_gateway.url}/jobs/{job['JOB_ID']}", timeout=5)
        assert cancelled.status_code == 200 and cancelled.json()["STATUS"] == "CANCELLED"
    assert wait_job(jobs_gateway, running[1]["JOB_ID"])["STATUS"] == "SUCCEEDED"
    assert jobs_gateway.get(f"/jobs/{queued['JOB_ID']}").json()["STATUS"] == "CANCELLED"
    again = jobs_gateway.session.delete(f"{jobs_gateway.url}/jobs/{queued['JOB_ID']}", timeout=5)
    assert again.status_code == 409 and "CANCELLED" in again.json()["ERROR"]


def test_listing_filters_and_pages(jobs_gateway):
    ids = [submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": i}).json()["JOB_ID"] for i in range(3)]
    for job_id in ids:
        wait_job(jobs_gateway, job_id)
    page = jobs_gateway.get("/jobs", params={"status": "succeeded", "signature": "echo", "limit": 2}).json()
    assert [j["JOB_ID"] for j in page["JOBS"]] == ids[::-1][:2] and page["NEXT_CURSOR"]
    rest = jobs_gateway.get("/jobs", params={"status": "SUCCEEDED", "limit": 2, "cursor": page["NEXT_CURSOR"]})
    assert rest.json()["JOBS"][0]["JOB_ID"] == ids[0]
    assert all("RESULT" not in job for job in page["JOBS"])


def test_interactive_requests_go_ahead_of_a_backlog(jobs_gateway):
    """Twenty jobs of 0.3 s on two workers: a /run sent meanwhile waits for a running job at
    most, never for the queue."""
    backlog = [submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 0.3}).json()["JOB_ID"]
               for i in range(20)]
    time.sleep(0.5)
    started = time.monotonic()
    assert jobs_gateway.run("echo", VALUE="now").json()["predict_result"]["echo"] == "now"
    assert time.monotonic() - started < 1.0  # the queue holds 6 s of work
    for job_id in backlog:
        jobs_gateway.session.delete(f"{jobs_gateway.url}/jobs/{job_id}", timeout=5)


def test_jobs_survive_a_sigkill_of_the_whole_process_group(gateway_factory, tmp_path):
    """Queued and running jobs, the gateway and its servers SIGKILLed: after a restart on the same
    cache, every job succeeds; those that were running ran again, one more attempt each."""
    gateway = gateway_factory(CONFIG)
    ids = [submit(gateway, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 0.4}).json()["JOB_ID"] for i in range(8)]
    deadline = time.monotonic() + 5
    while sum(gateway.get(f"/jobs/{i}").json()["STATUS"] == "RUNNING" for i in ids) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(gateway.proc.pid, signal.SIGKILL)
    gateway.proc.wait(5)
    restarted = gateway_factory(CONFIG, app_dir=gateway.app_dir)
    jobs = [wait_job(restarted, job_id, 20) for job_id in ids]
    assert [job["STATUS"] for job in jobs] == ["SUCCEEDED"] * 8
    rerun = [job for job in jobs if job["ATTEMPTS"] == 2]
    assert 1 <= len(rerun) <= 2 and all(job["ATTEMPTS"] in (1, 2) for job in jobs)
