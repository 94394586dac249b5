"""Durable jobs under load: accepting, crashing, interactive traffic ahead of a backlog, and a
batching endpoint draining one.

    .venv/bin/python -m bench.jobs [--pin] [--accept-seconds 5] [--crash-jobs 10000] [--kills 3]
                                   [--backlog 10000] [--only accept,crash,interactive,batching]

- **accept**: wrk POSTs ``/jobs`` on 64 connections for ``--accept-seconds``: durable
  submissions per second (each answered 202 once committed) and the p99 of the 202. The jobs
  go to a one-worker endpoint that takes 50 ms each, so the store's work is what is measured.
- **crash**: ``--crash-jobs`` jobs of the dummy model (4 workers), and the whole process group
  SIGKILLed ``--kills`` times while they run, each time started again on the same folder; then
  every job is read: lost (not found), not SUCCEEDED, and the attempts beyond the first (the
  re-runs), against the jobs that can have been running at the kills (4 per kill).
- **interactive**: ``/run``'s p50/p99 on the 10 ms ``batch_off`` endpoint (1 worker), alone and
  then with a ``--backlog`` of jobs on the same endpoint, against the bound: the p99 alone plus
  one job's own service time (one call's p50 alone, nothing in its way); and the jobs drained
  meanwhile per second, against the capacity ``/run`` leaves (one call per mean model time, from
  the server's ``/stats``, less ``/run``'s rate).
- **batching**: the ``batch8`` endpoint (8 per batch, 2 ms window) under full interactive load
  (wrk on 8 connections), alone and with a ``--backlog`` of jobs: what it serves in all per
  second (``/run`` and jobs) and its mean batch (from the server's ``/stats``); then the backlog
  drained alone.

With ``--pin`` the gateway and its servers run on CPU 1 and the load on CPU 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from bench.__main__ import BENCH, MODELS
from bench.common import GatewayRun
from bench.load import SERVE_CPU, WRK_CPU, ensure_wrk, wrk
from bench.redisserver import RedisServer, find_or_install
from bench.report import save_table

ENDPOINTS = sorted((BENCH / "endpoints").glob("*.py"))


REDIS: list[RedisServer] = []  # --store redis: the redis-server of the run


def store_config() -> dict[str, object]:
    """The job store of a gateway (or of several sharing one queue): --store's."""
    return {"JOB_STORE": REDIS[0].url(), "JOB_LEASE_S": 3} if REDIS else {}


def gateway(endpoints: dict[str, dict], cpu: str | None, app=None, store: dict | None = None) -> GatewayRun:
    config = {"CONFIG_ENDPOINTS": endpoints, "SHUTDOWN_GRACE": 2, **(store_config() if store is None else store)}
    run = GatewayRun(ENDPOINTS, config, len(endpoints), 24000, env={"BIS_LOG_LEVEL": "WARNING"}, cpu=cpu, app=app)
    if run.wait_ready(timeout=60) is None:
        output = run.output()
        run.stop()
        sys.exit("the gateway did not become ready:\n" + output)
    return run


def batch_submit(url: str, bodies: list[dict]) -> str:
    """One /batches of ``bodies``; its BATCH_ID."""
    data = "\n".join(json.dumps({**body, "custom_id": str(i)}) for i, body in enumerate(bodies)).encode()
    answer = requests.post(url + "/batches", data=data, headers={"Content-Type": "application/x-ndjson"}, timeout=120)
    answer.raise_for_status()
    return answer.json()["BATCH_ID"]


def batch_counts(url: str, batch_id: str) -> dict[str, int]:
    return requests.get(f"{url}/batches/{batch_id}", timeout=30).json()["COUNTS"]


def model_seconds(run: GatewayRun, name: str) -> float:
    """The mean time the endpoint's hooks took per call (its server's /stats)."""
    port = requests.get(run.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"][name]["PORT"]
    model = requests.get(f"http://127.0.0.1:{port}/stats", headers=run.server_headers(port),
                         timeout=5).json()["model_seconds"]
    return model["sum"] / max(1, sum(model["counts"]))


# -- the scenarios ----------------------------------------------------------------------------------
def accept(binary: str, pin: bool, seconds: float) -> dict:
    slow = {"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1, "CALL_MS": 50}
    run = gateway({"slow": slow}, SERVE_CPU if pin else None)
    try:
        result = wrk(binary, run.url + "/jobs", {"SIGNATURE": "slow", "INPUT_VALUE": 3}, 64, seconds,
                     WRK_CPU if pin else None)
    finally:
        run.stop()
    return {"submissions_per_s": result["rps"], "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "errors": result["errors"]}


def crash(pin: bool, jobs: int, kills: int) -> dict:
    """One gateway SIGKILLed ``kills`` times and started again on the same folder; with --store
    redis, two gateways on one Redis, one of them SIGKILLed ``kills`` times (a new one started
    each time) while the other goes on."""
    endpoint = MODELS["dummy"][0]
    store = store_config()
    run = first = gateway({"dummy": endpoint}, SERVE_CPU if pin else None, store=store)  # first: holds the folder
    other = gateway({"dummy": endpoint}, SERVE_CPU if pin else None, store=store) if REDIS else None
    app = None if REDIS else run.app
    started = time.monotonic()
    batch_id = batch_submit(run.url, [{"SIGNATURE": "dummy", "INPUT_VALUE": i} for i in range(jobs)])
    running_at_kills = 0
    for kill in range(kills):
        deadline = time.monotonic() + 60
        while True:  # kill while the backlog is being worked through, a little further each time
            counts = batch_counts(run.url, batch_id)
            ended = counts["SUCCEEDED"] + counts["FAILED"]
            if ended >= jobs * (kill + 1) // (kills + 1) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        running_at_kills += endpoint["NR_WORKERS"]  # at most this many were running (interactive traffic: none)
        os.killpg(run.proc.pid, signal.SIGKILL)
        print(f"  kill {kill + 1}: {counts}", flush=True)
        run.proc.wait(10)
        run.stop(keep=True)
        run = gateway({"dummy": endpoint}, SERVE_CPU if pin else None, app=app, store=store)
    while (counts := batch_counts(run.url, batch_id))["SUCCEEDED"] + counts["FAILED"] < jobs:
        time.sleep(0.2)
    drained = time.monotonic() - started
    rows = requests.get(f"{run.url}/batches/{batch_id}/results", timeout=120).text.splitlines()
    reruns = 0
    cursor = None
    while True:  # the attempts of every job, from the listing (newest first, a page at a time)
        page = requests.get(run.url + "/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})},
                            timeout=60).json()
        reruns += sum(job["ATTEMPTS"] - 1 for job in page["JOBS"])
        cursor = page["NEXT_CURSOR"]
        if not cursor:
            break
    run.stop()
    first.stop()  # its folder goes now
    if other is not None:
        other.stop()
    succeeded = sum(json.loads(row)["status"] == "SUCCEEDED" for row in rows)
    return {"jobs": jobs, "kills": kills, "gateways": 2 if REDIS else 1, "lost": jobs - len(rows),
            "not_succeeded": jobs - succeeded, "reruns": reruns, "running_at_kills_at_most": running_at_kills,
            "seconds": round(drained, 1)}


def interactive(binary: str, pin: bool, backlog: int) -> dict:
    endpoint = MODELS["batch_off"][0]
    run = gateway({"batch_off": endpoint}, SERVE_CPU if pin else None)
    body = {"SIGNATURE": "batch_off", "INPUT_VALUE": 3}
    try:
        alone = wrk(binary, run.url + "/run", body, 1, 5, WRK_CPU if pin else None)
        batch_id = batch_submit(run.url, [body] * backlog)
        time.sleep(1)
        before = batch_counts(run.url, batch_id)["SUCCEEDED"]
        started = time.monotonic()
        loaded = wrk(binary, run.url + "/run", body, 1, 5, WRK_CPU if pin else None)
        jobs_per_s = (batch_counts(run.url, batch_id)["SUCCEEDED"] - before) / (time.monotonic() - started)
        model_ms = 1000 * model_seconds(run, "batch_off")
    finally:
        run.stop()
    service_ms = alone["p50_ms"]  # one call's time with nothing in its way: what a /run may wait for a job
    capacity = 1000 / model_ms  # calls per second its one worker can make
    return {"run_p50_ms_alone": alone["p50_ms"], "run_p99_ms_alone": alone["p99_ms"],
            "run_p50_ms_backlog": loaded["p50_ms"], "run_p99_ms_backlog": loaded["p99_ms"],
            "job_service_ms": service_ms, "model_ms": round(model_ms, 2),
            "p99_bound_ms": round(alone["p99_ms"] + service_ms, 2),
            "run_rps_backlog": loaded["rps"],
            "jobs_per_s": round(jobs_per_s, 1),
            "share_of_spare_capacity": round(jobs_per_s / max(1e-9, capacity - loaded["rps"]), 3)}


def batching(binary: str, pin: bool, backlog: int) -> dict:
    """The batch8 endpoint under full interactive load (wrk, 8 connections), alone and then with a
    backlog of jobs: what it serves in all (/run and jobs), and its mean batch; then the backlog
    alone."""
    endpoint = MODELS["batch8"][0]
    body = {"SIGNATURE": "batch8", "INPUT_VALUE": 3}
    run = gateway({"batch8": endpoint}, SERVE_CPU if pin else None)
    try:
        port = requests.get(run.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"]["batch8"]["PORT"]

        def window(seconds: float, interactive: bool, batch_id: str | None) -> dict:
            def sizes() -> dict:
                return requests.get(f"http://127.0.0.1:{port}/stats", headers=run.server_headers(port),
                                    timeout=5).json()["batch_size"]
            before, done_before, started = sizes(), batch_counts(run.url, batch_id)["SUCCEEDED"] if batch_id else 0, \
                time.monotonic()
            load = wrk(binary, run.url + "/run", body, 8, seconds, WRK_CPU if pin else None) if interactive else None
            if not interactive:
                time.sleep(seconds)
            jobs = (batch_counts(run.url, batch_id)["SUCCEEDED"] - done_before if batch_id else 0) / (
                time.monotonic() - started)
            after = sizes()
            calls = sum(after["counts"]) - sum(before["counts"])
            rps = load["rps"] if load else 0.0
            return {"run_rps": rps, "jobs_per_s": round(jobs, 1), "served_per_s": round(rps + jobs, 1),
                    "mean_batch": round((after["sum"] - before["sum"]) / max(1, calls), 2)}

        wrk(binary, run.url + "/run", body, 8, 2, WRK_CPU if pin else None)  # warm up
        alone = window(6, True, None)
        batch_id = batch_submit(run.url, [body] * backlog)
        loaded = window(6, True, batch_id)
        drain = window(4, False, batch_id)
    finally:
        run.stop()
    return {"interactive_alone": alone, "interactive_and_backlog": loaded, "backlog_alone": drain,
            "served_share": round(loaded["served_per_s"] / max(1e-9, alone["served_per_s"]), 3)}


def drain(submit: Callable[[requests.Session, int], str], done: Callable[[requests.Session, str], bool],
          jobs: int) -> dict:
    """Submit ``jobs`` jobs from 16 threads (``submit(session, i)`` gives its id), then wait until
    the last ones are done (``done(session, id)``), then check every one (a job found not done
    then is waited for, and counted in the time): submissions per second, and the seconds from
    the first submission to the last job done."""
    ids: list[str] = [""] * jobs
    started = time.monotonic()

    def submitter(part: int) -> None:
        with requests.Session() as session:
            for i in range(part, jobs, 16):
                ids[i] = submit(session, i)
    threads = [threading.Thread(target=submitter, args=(part,)) for part in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    submitted = time.monotonic() - started
    with requests.Session() as session:
        for job_id in ids[-16:]:  # the last each thread submitted: both systems run jobs first in, first out
            while not done(session, job_id):
                time.sleep(0.01)
        drained = time.monotonic() - started
        late = [job_id for job_id in ids if not done(session, job_id)]  # then every one checked (not timed)
        for job_id in late:
            while not done(session, job_id):
                time.sleep(0.01)
        if late:
            drained = time.monotonic() - started
    return {"jobs": jobs, "submissions_per_s": round(jobs / submitted, 1), "drained_s": round(drained, 2),
            "not_done_when_the_last_were": len(late)}


def peer(binary: str, pin: bool, jobs: int) -> dict:
    """BentoML's task API (``@bentoml.task``) beside the gateway's jobs, the dummy model in both:
    submissions per second with wrk (64 connections), and ``jobs`` jobs submitted and drained."""
    from bench.common import free_port_block
    from bench.peers import PEERS, PeerProcess, ensure_peer

    results: dict[str, dict] = {}
    bento = PeerProcess(PEERS["bentoml"], ensure_peer(PEERS["bentoml"]), "dummy", free_port_block(1, 25000),
                        SERVE_CPU if pin else None)
    try:
        bento.wait_ready({"INPUT_VALUE": 3})
        submit_url = bento.base + "/predict/submit"
        load = wrk(binary, submit_url, {"INPUT_VALUE": 3}, 64, 5, WRK_CPU if pin else None)
        time.sleep(10)  # what wrk queued, drained before the next measure

        def bento_submit(session: requests.Session, i: int) -> str:
            return session.post(submit_url, json={"INPUT_VALUE": i}, timeout=60).json()["task_id"]

        def bento_done(session: requests.Session, task_id: str) -> bool:
            status = session.get(bento.base + "/predict/status", params={"task_id": task_id}, timeout=60).json()
            return status["status"] in ("success", "completed", "failure", "failed")
        results["bentoml"] = {"wrk_submissions_per_s": load["rps"], "wrk_p99_ms": load["p99_ms"],
                              **drain(bento_submit, bento_done, jobs)}
    finally:
        bento.stop()
    run = gateway({"dummy": MODELS["dummy"][0]}, SERVE_CPU if pin else None)
    try:
        load = wrk(binary, run.url + "/jobs", {"SIGNATURE": "dummy", "INPUT_VALUE": 3}, 64, 5,
                   WRK_CPU if pin else None)
        time.sleep(5)

        def gateway_submit(session: requests.Session, i: int) -> str:
            return session.post(run.url + "/jobs", json={"SIGNATURE": "dummy", "INPUT_VALUE": i},
                                timeout=60).json()["JOB_ID"]

        def gateway_done(session: requests.Session, job_id: str) -> bool:
            return session.get(f"{run.url}/jobs/{job_id}", timeout=60).json()["STATUS"] == "SUCCEEDED"
        results["gateway"] = {"wrk_submissions_per_s": load["rps"], "wrk_p99_ms": load["p99_ms"],
                              **drain(gateway_submit, gateway_done, jobs)}
    finally:
        run.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--accept-seconds", type=float, default=5)
    parser.add_argument("--crash-jobs", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite",
                        help="the job store: embedded, or a redis-server started for the run (pinned with the "
                             "gateways); the crash scenario then runs two gateways on it and kills one")
    parser.add_argument("--only", default="accept,crash,interactive,batching",
                        help="scenarios: accept, crash, interactive, batching, peer (BentoML beside it)")
    args = parser.parse_args()
    binary = ensure_wrk()
    wanted = set(args.only.split(","))
    report = {}
    if args.store == "redis":
        folder = tempfile.TemporaryDirectory()
        REDIS.append(RedisServer(find_or_install(), Path(folder.name), cpu=SERVE_CPU if args.pin else None).start())
    try:
        run_scenarios(binary, args, wanted, report)
    finally:
        for server in REDIS:
            server.stop()
    lines = [f"| {name} | {json.dumps(figures)} |" for name, figures in report.items()]
    save_table("jobs" if args.store == "sqlite" else "jobs-redis", "\n".join(["| scenario | figures |", "|---|---|",
                                                                             *lines]), args, report)
    return 0


def run_scenarios(binary: str, args: argparse.Namespace, wanted: set[str], report: dict) -> None:
    if "accept" in wanted:
        report["accept"] = accept(binary, args.pin, args.accept_seconds)
        print("accept", report["accept"], flush=True)
    if "crash" in wanted:
        report["crash"] = crash(args.pin, args.crash_jobs, args.kills)
        print("crash", report["crash"], flush=True)
    if "interactive" in wanted:
        report["interactive"] = interactive(binary, args.pin, args.backlog)
        print("interactive", report["interactive"], flush=True)
    if "batching" in wanted:
        report["batching"] = batching(binary, args.pin, args.backlog)
        print("batching", report["batching"], flush=True)
    if "peer" in wanted:
        report["peer"] = peer(binary, args.pin, args.crash_jobs)
        print("peer", report["peer"], flush=True)


if __name__ == "__main__":
    sys.exit(main())
