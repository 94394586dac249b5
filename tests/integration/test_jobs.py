"""Durable jobs through a real gateway: submit, read, wait, list, cancel, idempotency, errors,
interactive traffic first, and a SIGKILL of the whole process group with jobs queued and running."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import threading
import time

import pytest
import requests
from conftest import ECHO_CONFIG, Gateway, make_app
from standardwebhooks import Webhook

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"integration-webhook-secret-0123").decode()
CONFIG = {**ECHO_CONFIG, "WEBHOOK_ALLOWED_HOSTS": ["127.0.0.1", "*.example.org"], "CONFIG_ENDPOINTS": {
    "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 5, "PREFIX": "e1"},
    "echo_off": {"SERVER_CLASS": "echo_model", "DISABLED": True},
    "stream": {"SERVER_CLASS": "stream_model", "NR_WORKERS": 1},
}}


def submit(gateway: Gateway, body: dict, **headers: str) -> requests.Response:
    return gateway.session.post(gateway.url + "/jobs", json=body, headers=headers, timeout=10)


def wait_job(gateway: Gateway, job_id: str, seconds: float = 10) -> dict:
    answer = gateway.session.get(f"{gateway.url}/jobs/{job_id}", params={"wait": seconds}, timeout=seconds + 5)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def jobs_gateway(request, tmp_path_factory):
    """A gateway on each job store: the embedded one, and a real Redis (every test of this module
    runs on both)."""
    store = request.getfixturevalue("redis_server").url() if request.param == "redis" else "sqlite"
    config = {**CONFIG, "JOB_STORE": store}
    gateway = Gateway(make_app(tmp_path_factory.mktemp("jobs"), config), env={"BIS_WEBHOOK_SECRET": SECRET}).start()
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
    ({"SIGNATURE": "echo", "WEBHOOK": "http://internal.corp:8080/hook"}, 400, "WEBHOOK_ALLOWED_HOSTS"),
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


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: answers the statuses it is given in turn (then 200), and
    keeps what it received."""

    def __init__(self, statuses: list[int]):
        received, pending = [], list(statuses)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(pending.pop(0) if pending else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.received = received
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hook"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_webhook_is_signed_retried_and_its_attempts_kept(jobs_gateway):
    receiver = Receiver([500])
    try:
        job = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": "hooked", "WEBHOOK": receiver.url}).json()
        assert wait_job(jobs_gateway, job["JOB_ID"])["STATUS"] == "SUCCEEDED"
        deadline = time.monotonic() + 15  # the second attempt comes 5 s after the first
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, receiver.received
            time.sleep(0.1)
        for headers, body in receiver.received:
            event = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})  # raises if forged
            assert headers["webhook-id"] == job["JOB_ID"] and event["type"] == "job.succeeded"
            assert event["data"]["RESULT"]["predict_result"]["echo"] == "hooked"
            assert "WEBHOOK" not in json.dumps(event["data"]["RESULT"])  # the hooks never saw it
        deadline = time.monotonic() + 5
        while (read := jobs_gateway.get(f"/jobs/{job['JOB_ID']}").json())["WEBHOOK_STATUS"] != "DELIVERED":
            assert time.monotonic() < deadline, read
            time.sleep(0.05)
        assert [a.get("STATUS") for a in read["WEBHOOK_DELIVERIES"]] == [500, 200]
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_a_cancelled_job_is_told_to_its_webhook(jobs_gateway):
    receiver = Receiver([])
    try:
        job = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": 1, "SLEEP": 2, "WEBHOOK": receiver.url}).json()
        jobs_gateway.session.delete(f"{jobs_gateway.url}/jobs/{job['JOB_ID']}", timeout=5)
        deadline = time.monotonic() + 5
        while not receiver.received:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        headers, body = receiver.received[0]
        assert Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})["type"] == "job.cancelled"
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_the_python_client_submits_waits_and_cancels(jobs_gateway):
    from basic_inference_server.client import Client, JobCancelled, ServerError

    with Client(jobs_gateway.url) as client:
        job = client.submit("echo", VALUE="py", priority=8, idempotency_key="client-1")
        assert job.result(timeout=10)["predict_result"]["echo"] == "py"
        assert client.submit("echo", VALUE="py", idempotency_key="client-1").id == job.id
        assert client.job(job.id).status() == "SUCCEEDED"
        with pytest.raises(ServerError, match="model exploded"):
            client.submit("echo", VALUE=1, FAIL=True).result(timeout=10)
        slow = client.submit("echo", VALUE=1, SLEEP=2)
        assert slow.cancel()["STATUS"] == "CANCELLED"
        with pytest.raises(JobCancelled):
            slow.result(timeout=5)
        assert [j["JOB_ID"] for j in client.jobs(status="CANCELLED", limit=1)["JOBS"]] == [slow.id]


def test_bis_jobs_submit_wait_get_cancel_list(jobs_gateway):
    import subprocess
    import sys

    def bis(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "basic_inference_server.client", "--url", jobs_gateway.url,
                               "jobs", *args], capture_output=True, text=True, timeout=30)

    submitted = bis("submit", "echo", "VALUE=cli", "--priority", "7", "--idempotency-key", "cli-1")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["JOB_ID"]
    waited = bis("wait", job_id, "--for", "10")
    assert waited.returncode == 0 and json.loads(waited.stdout)["RESULT"]["predict_result"]["echo"] == "cli"
    assert json.loads(bis("get", job_id).stdout)["STATUS"] == "SUCCEEDED"
    failed = bis("wait", json.loads(bis("submit", "echo", "VALUE=1", "FAIL=true").stdout)["JOB_ID"], "--for", "10")
    assert failed.returncode == 1 and json.loads(failed.stdout)["STATUS"] == "FAILED"
    slow = json.loads(bis("submit", "echo", "VALUE=1", "SLEEP=2").stdout)["JOB_ID"]
    assert json.loads(bis("cancel", slow).stdout)["STATUS"] == "CANCELLED"
    again = bis("cancel", slow)
    assert again.returncode != 0 and "409" in again.stderr
    listed = json.loads(bis("list", "--status", "CANCELLED", "--limit", "1").stdout)
    assert [job["JOB_ID"] for job in listed["JOBS"]] == [slow]
    assert bis("submit", "nope", "VALUE=1").returncode == 4  # unknown signature, as for run


def post_batch(gateway: Gateway, lines: list[str], content_type: str = "application/x-ndjson") -> requests.Response:
    return gateway.session.post(gateway.url + "/batches", data="\n".join(lines).encode(),
                                headers={"Content-Type": content_type}, timeout=10)


def test_a_batch_runs_every_line_and_gives_results_in_input_order(jobs_gateway):
    lines = [json.dumps({"SIGNATURE": "echo", "VALUE": i, "custom_id": f"row-{i}"}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"SIGNATURE": "nope", "VALUE": 1, "custom_id": "bad-sig"}))
    lines.append(json.dumps({"SIGNATURE": "echo", "VALUE": "slow", "SLEEP": 1, "custom_id": "last"}))
    answer = post_batch(jobs_gateway, lines)
    assert answer.status_code == 202, answer.text
    batch = answer.json()
    assert batch["TOTAL"] == 8 and batch["COUNTS"]["FAILED"] == 2 and batch["STATUS"] == "IN_PROGRESS"
    early = jobs_gateway.get(f"/batches/{batch['BATCH_ID']}/results")
    assert early.status_code == 409 and "has not finished" in early.json()["ERROR"]
    deadline = time.monotonic() + 15
    while jobs_gateway.get(f"/batches/{batch['BATCH_ID']}").json()["STATUS"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    results = jobs_gateway.get(f"/batches/{batch['BATCH_ID']}/results")
    assert results.status_code == 200 and results.headers["Content-Type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in results.text.splitlines()]
    assert [row["custom_id"] for row in rows] == ["row-0", "row-1", None, "row-2", "bad-sig", "row-3", "row-4",
                                                  "last"]
    assert rows[0]["status"] == "SUCCEEDED" and rows[0]["response"]["predict_result"]["echo"] == 0
    assert "custom_id" not in json.dumps(rows[0]["response"]["predict_result"])  # removed before the hooks
    assert rows[2]["status"] == "FAILED" and rows[2]["error"]["ERROR"].startswith("line 3: Malformed JSON")
    assert rows[4]["status"] == "FAILED" and rows[4]["error"]["ERROR"].startswith("line 5: Bad signature")
    assert rows[7]["response"]["predict_result"]["echo"] == "slow"


def test_bad_batches_are_clear_errors(jobs_gateway):
    assert post_batch(jobs_gateway, ['{"SIGNATURE": "echo", "VALUE": 1}'], "application/json").status_code == 415
    assert post_batch(jobs_gateway, ["", "  "]).status_code == 400
    assert jobs_gateway.get("/batches/batch_nope").status_code == 404
    assert jobs_gateway.get("/batches/batch_nope/results").status_code == 404
    refused = jobs_gateway.session.get(jobs_gateway.url + "/batches", timeout=5)
    assert refused.status_code == 405 and refused.headers["Allow"] == "POST"


def test_job_metrics(jobs_gateway):
    job = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": "m"}).json()
    wait_job(jobs_gateway, job["JOB_ID"])
    deadline = time.monotonic() + 10  # the store's figures are counted every 5 s
    while True:
        text = jobs_gateway.get("/metrics").text
        if 'bis_jobs{signature="echo",state="SUCCEEDED"}' in text:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)
    assert 'bis_job_attempts_total{signature="echo"}' in text
    assert 'bis_job_duration_seconds_count{signature="echo"}' in text
    assert 'bis_webhook_deliveries_total{outcome="delivered"}' in text


def test_the_dashboard_data_has_the_queue_per_endpoint(jobs_gateway):
    # 16 s of work on 2 workers: queued for longer than the 5 s between two counts of the store
    held = [submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": i, "SLEEP": 1}).json()["JOB_ID"] for i in range(16)]
    deadline = time.monotonic() + 10
    while (queue := jobs_gateway.get("/dashboard/data").json()["JOBS"].get("echo", {})).get("queued", 0) < 1:
        assert time.monotonic() < deadline, queue
        time.sleep(0.2)
    assert queue["oldest_age_s"] > 0 and set(queue) == {"queued", "running",
                                                                                   "oldest_age_s", "ended"}
    for job_id in held:
        jobs_gateway.session.delete(f"{jobs_gateway.url}/jobs/{job_id}", timeout=5)


def test_batches_from_the_client_and_bis(jobs_gateway, tmp_path):
    import subprocess
    import sys

    from basic_inference_server.client import Client

    with Client(jobs_gateway.url) as client:
        batch = client.batch({"SIGNATURE": "echo", "VALUE": i, "custom_id": f"c{i}"} for i in range(3))
        rows = batch.results(timeout=10)
        assert [(r["custom_id"], r["status"], r["response"]["predict_result"]["echo"]) for r in rows] == [
            ("c0", "SUCCEEDED", 0), ("c1", "SUCCEEDED", 1), ("c2", "SUCCEEDED", 2)]
        assert client.batch_of(batch.id).last["STATUS"] == "COMPLETED"
    rows_file = tmp_path / "rows.ndjson"
    rows_file.write_text('{"SIGNATURE": "echo", "VALUE": "x", "custom_id": "a"}\n'
                         '{"SIGNATURE": "nope", "custom_id": "b"}\n')

    def bis(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "basic_inference_server.client", "--url", jobs_gateway.url,
                               "batches", *args], capture_output=True, text=True, timeout=30)

    submitted = bis("submit", str(rows_file))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["BATCH_ID"]
    results = bis("results", batch_id, "--for", "10")
    assert results.returncode == 0, results.stderr
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert [(r["custom_id"], r["status"]) for r in lines] == [("a", "SUCCEEDED"), ("b", "FAILED")]
    assert json.loads(bis("get", batch_id).stdout)["COUNTS"]["FAILED"] == 1


def sse_events(response: requests.Response) -> list[tuple[str, dict]]:
    """(event, data) of a Server-Sent Events answer, as they came."""
    events, kind = [], "message"
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
            kind = "message"
    return events


def test_a_streaming_job_keeps_its_items_and_its_result_is_runs_collected_answer(jobs_gateway):
    job = submit(jobs_gateway, {"SIGNATURE": "stream", "N": 4}).json()
    done = wait_job(jobs_gateway, job["JOB_ID"])
    direct = jobs_gateway.run("stream", N=4).json()
    assert done["STATUS"] == "SUCCEEDED"
    assert [item["i"] for item in done["RESULT"]["predict_result"]] == [0, 1, 2, 3]
    assert set(done["RESULT"]) >= set(direct) - {"items"}  # the envelope /run gives
    with jobs_gateway.session.get(f"{jobs_gateway.url}/jobs/{job['JOB_ID']}/events", stream=True, timeout=10) as events:
        assert events.headers["Content-Type"].startswith("text/event-stream")
        seen = sse_events(events)
    assert [data["i"] for kind, data in seen if kind == "message"] == [0, 1, 2, 3]
    assert seen[-1][0] == "end" and seen[-1][1]["STATUS"] == "SUCCEEDED"


def test_job_events_replay_then_follow_a_running_stream(jobs_gateway):
    job = submit(jobs_gateway, {"SIGNATURE": "stream", "N": 6, "GAP_MS": 150}).json()
    deadline = time.monotonic() + 5
    while jobs_gateway.get(f"/jobs/{job['JOB_ID']}").json()["STATUS"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.35)  # a few items are kept already, the others are still to come
    started = time.monotonic()
    with jobs_gateway.session.get(f"{jobs_gateway.url}/jobs/{job['JOB_ID']}/events", stream=True, timeout=10) as events:
        seen = sse_events(events)
    assert [data["i"] for kind, data in seen if kind == "message"] == list(range(6))
    assert seen[-1][0] == "end" and seen[-1][1]["STATUS"] == "SUCCEEDED"
    assert time.monotonic() - started > 0.2  # it followed the items still to come, it did not only replay
    assert jobs_gateway.get("/jobs/job_nope/events").status_code == 404


def test_a_large_job_body_is_not_parsed_by_the_gateway_and_its_fields_never_reach_the_hooks(jobs_gateway):
    """Over 64 KB a submission is scanned, not parsed (as /run's bodies): its PRIORITY and WEBHOOK
    are found, checked and kept, and the model server leaves them out of the inputs."""
    big = "x" * 100_000
    job = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": big, "PRIORITY": 8}).json()
    assert job["PRIORITY"] == 8
    done = wait_job(jobs_gateway, job["JOB_ID"])
    assert done["STATUS"] == "SUCCEEDED" and done["RESULT"]["predict_result"]["echo"] == big
    assert submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": big, "PRIORITY": 12}).status_code == 400
    refused = submit(jobs_gateway, {"SIGNATURE": "echo", "VALUE": big, "WEBHOOK": "http://evil.test/x"})
    assert refused.status_code == 400 and "WEBHOOK_ALLOWED_HOSTS" in refused.json()["ERROR"]
    line = json.dumps({"SIGNATURE": "echo", "VALUE": big, "custom_id": "big", "PRIORITY": 1})
    batch = post_batch(jobs_gateway, [line]).json()
    deadline = time.monotonic() + 10
    while jobs_gateway.get(f"/batches/{batch['BATCH_ID']}").json()["STATUS"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    row = json.loads(jobs_gateway.get(f"/batches/{batch['BATCH_ID']}/results").text)
    assert row["custom_id"] == "big" and row["response"]["predict_result"]["echo"] == big
