"""deploy/swarm/stack.yml on a real Docker Swarm: the gateway in front of an endpoint's model
servers running as a service of their own.

On this machine's engine (dockerenv.py), a one-node swarm is initialised (and left again at the
end when it was not one before), the image is built twice (v2 changes the demo model's answer),
the stack is deployed with the model service at 3 replicas, and through the gateway's published
port only: the answers come from all 3 replicas evenly, ``docker service scale`` to 5 is used
within 15 s, ``docker service update --image`` under load fails no request and ends with v2's
answers, and ``docker kill`` of a replica under load fails at most what it held, with the
gateway routing around it within 2 s. The stack runs with its optional Redis service
(jobs-redis.yml, Redis from a stand-in image built from Debian's redis-server, reached by DNS
round robin): a backlog of jobs outlives a ``docker kill`` of the gateway's task, whose
successor (a new container, a new cache volume) runs every job from Redis, the ones that were
running taken over once their lease ran out. Everything the test created is removed. Skipped, saying
why, where no engine can run; leave it out with ``-m "not docker"``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from dockerenv import Engine, tail
from test_image import clean_copy, engine_or_skip, free_port, http, say, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
STACK_FILE = REPO / "deploy" / "swarm" / "stack.yml"
REDIS_FILE = REPO / "deploy" / "swarm" / "jobs-redis.yml"
PREFIX = f"bis-swarm-{uuid.uuid4().hex[:6]}"
MODEL = "dummy_model_demo2"
V1_ANSWER, V2_ANSWER = "3*0 + 0 = 0 PREDICTED", "3*0 + 0 = 0 PREDICTED by v2"
V2_DOCKERFILE = """\
FROM {image}
USER root
RUN sed -i 's/ PREDICTED"/ PREDICTED by v2"/' endpoints/dummy_model_demo2.py \\
    && grep -q 'PREDICTED by v2' endpoints/dummy_model_demo2.py
USER 10001:10001
"""
# No registry here: Redis's image is Debian's redis-server on the stand-in base (never pulled).
REDIS_DOCKERFILE = """\
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /data
WORKDIR /data
CMD ["redis-server", "--protected-mode", "no"]
"""
CLIENTS = 8
FIGURES: list[str] = []  # what the tests measured, printed at the end with the fixture's notes


@dataclass
class Swarm:
    engine: Engine
    port: int
    v1: str
    v2: str
    service: str = f"{PREFIX}_model-demo2"
    session: requests.Session = field(default_factory=http)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def docker(self, *args: str, **kwargs: Any):
        return self.engine.docker(*args, **kwargs)

    def addresses(self) -> dict[str, dict[str, Any]]:
        """The gateway's view of the model service: address -> its /list_servers entry."""
        try:
            listed = self.session.post(self.url + "/list_servers", json={}, timeout=5).json()["AVAIL_SERVERS"]
        except (requests.RequestException, ValueError, KeyError):
            return {}
        return {name.split("@", 1)[1]: info for name, info in listed.items() if name.startswith(MODEL + "@")}

    def ready(self) -> set[str]:
        return {address for address, info in self.addresses().items() if info["STATE"] == "READY"}

    def call(self, session: requests.Session) -> tuple[int, str, str]:
        """One /run of the model: (status, the answering server's id, its answer or error)."""
        try:
            reply = session.post(self.url + "/run", json={"SIGNATURE": MODEL, "INPUT_VALUE": 3}, timeout=30)
            body = reply.json()
        except (requests.RequestException, ValueError) as exc:
            return 0, "", repr(exc)
        if reply.status_code != 200:
            return reply.status_code, "", str(body.get("ERROR"))
        return 200, body["worker_id"].split(":")[0], body["predict_result"]["dummy_model_predict"]

    def logs(self) -> str:
        done = self.docker("service", "logs", "--raw", "--tail", "40", f"{PREFIX}_gateway", check=False)
        return tail(done.stdout + done.stderr, 40)


class Load:
    """CLIENTS threads calling the model until stopped; each result with its time."""

    def __init__(self, swarm: Swarm):
        self.swarm = swarm
        self.results: list[tuple[float, int, str, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self) -> None:
        with http() as session:
            while not self._stop.is_set():
                status, server, answer = self.swarm.call(session)
                self.results.append((time.monotonic(), status, server, answer))

    def failed(self) -> list[tuple[float, int, str, str]]:
        return [r for r in self.results if r[1] != 200]


@pytest.fixture(scope="module")
def swarm(pytestconfig: pytest.Config) -> Iterator[Swarm]:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bis-swarm-test-"))
    engine = engine_or_skip(pytestconfig, workdir, "Docker Swarm test")
    notes = list(engine.notes)
    node_state = engine.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    joined_here = node_state == "inactive"
    images: list[str] = []
    try:
        if joined_here:
            engine.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
            notes.append("initialised a one-node swarm")
        v1, v2, redis = f"{PREFIX}:v1", f"{PREFIX}:v2", f"{PREFIX}-redis:stand-in"
        images += [v2, v1, redis]
        engine.docker("build", "--force-rm", "-t", v1, str(clean_copy(workdir / "context")), timeout=480)
        (workdir / "v2").mkdir()
        (workdir / "v2" / "Dockerfile").write_text(V2_DOCKERFILE.format(image=v1), encoding="utf-8")
        engine.docker("build", "--force-rm", "-t", v2, str(workdir / "v2"), timeout=120)
        (workdir / "redis").mkdir()
        (workdir / "redis" / "Dockerfile").write_text(REDIS_DOCKERFILE, encoding="utf-8")
        engine.docker("build", "--force-rm", "-t", redis, str(workdir / "redis"), timeout=300)
        notes.append(f"images built in {time.monotonic() - started:.0f}s")
        engine.docker("secret", "create", f"{PREFIX}-token", "-", input=uuid.uuid4().hex)
        port = free_port()
        env = dict(os.environ, BIS_IMAGE=v1, BIS_PORT=str(port), BIS_MODEL_REPLICAS="3", BIS_SECRET=f"{PREFIX}-token",
                   BIS_REDIS_IMAGE=redis)
        engine.docker("stack", "deploy", "--compose-file", str(STACK_FILE), "--compose-file", str(REDIS_FILE), PREFIX,
                      env=env, timeout=120)
        the_swarm = Swarm(engine, port, v1, v2)
        wait_for(lambda: len(the_swarm.ready()) == 3, 180, "the gateway to see 3 READY model servers")
        notes.append(f"stack ready after {time.monotonic() - started:.0f}s")
        yield the_swarm
    finally:
        engine.docker("stack", "rm", PREFIX, check=False)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (
                engine.docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={PREFIX}", check=False).stdout
                or engine.docker("network", "ls", "-q", "--filter", f"name={PREFIX}_", check=False).stdout):
            time.sleep(1)
        engine.docker("secret", "rm", f"{PREFIX}-token", check=False)
        engine.docker("volume", "rm", f"{PREFIX}_redis-data", check=False)
        for image in images:
            engine.docker("rmi", "--force", image, check=False, timeout=120)
        if joined_here:
            engine.docker("swarm", "leave", "--force", check=False)
            notes.append("left the swarm again")
        left = engine.docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={PREFIX}", check=False).stdout
        if engine.started_here:
            notes.append("stopped the dockerd started here")
        engine.close()
        shutil.rmtree(workdir, ignore_errors=True)
        notes.append(f"{time.monotonic() - started:.0f}s in all")
        say(pytestconfig, f"\n[docker swarm test] {'; '.join(notes + FIGURES)}")
        assert not left, f"left behind: {left}"


def spread(results: list[tuple[float, int, str, str]]) -> collections.Counter:
    return collections.Counter(server for _, status, server, _ in results if status == 200)


def test_requests_spread_evenly_over_the_replicas(swarm: Swarm) -> None:
    # Three READY addresses (the fixture's wait) and the gateway's own readiness may be a moment apart.
    wait_for(lambda: swarm.session.get(swarm.url + "/ready", timeout=5).status_code == 200, 30, "/ready to answer 200")
    answered: list[tuple[int, str, str]] = []

    def client(count: int) -> None:
        with http() as session:
            answered.extend(swarm.call(session) for _ in range(count))

    threads = [threading.Thread(target=client, args=(3000 // CLIENTS,)) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(answered) == 3000 // CLIENTS * CLIENTS
    assert [a for a in answered if a[0] != 200] == []
    assert {answer for _, _, answer in answered} == {V1_ANSWER}
    counts = collections.Counter(server for _, server, _ in answered)
    assert len(counts) == 3, counts  # three model servers (their own ids in worker_id)
    shares = sorted(count / len(answered) for count in counts.values())
    FIGURES.append("spread over 3 replicas: " + ", ".join(f"{share:.1%}" for share in shares))
    assert 0.25 <= shares[0] and shares[-1] <= 0.42, counts
    served = [info["REQUESTS_SERVED"] for info in swarm.addresses().values()]
    assert sorted(served) == sorted(counts.values())  # the gateway's count per address agrees


def test_scaling_to_five_is_used_within_15_s(swarm: Swarm) -> None:
    scaled = time.monotonic()
    swarm.docker("service", "scale", "--detach", f"{swarm.service}=5")
    wait_for(lambda: len(swarm.ready()) == 5, 15, "the gateway to route to 5 replicas")
    seen_after = time.monotonic() - scaled
    FIGURES.append(f"5 replicas READY at the gateway {seen_after:.1f}s after docker service scale")
    with http() as session:
        servers = {swarm.call(session)[1] for _ in range(100)}
    assert len(servers) == 5, (servers, seen_after)
    swarm.docker("service", "scale", "--detach", f"{swarm.service}=3")  # back down: drained, not lost
    wait_for(lambda: len(swarm.addresses()) == 3, 60, "the 2 removed replicas to leave the gateway's table")


def test_a_rolling_update_under_load_loses_nothing(swarm: Swarm) -> None:
    with Load(swarm) as load:
        time.sleep(1)
        swarm.docker("service", "update", "--detach=false", "--image", swarm.v2, swarm.service, timeout=300)
        updated = time.monotonic()
        time.sleep(2)
    FIGURES.append(f"rolling update: {len(load.results)} requests, {len(load.failed())} failed")
    assert load.failed() == [], (load.failed()[:5], swarm.logs())
    answers = [answer for t, _, _, answer in load.results if t > updated + 0.5]
    assert answers and set(answers) == {V2_ANSWER}
    assert {answer for _, _, _, answer in load.results} == {V1_ANSWER, V2_ANSWER}
    wait_for(lambda: len(swarm.ready()) == 3, 30, "3 READY replicas of v2")


def test_a_killed_replica_fails_only_its_requests_in_flight(swarm: Swarm) -> None:
    containers = swarm.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={swarm.service}").stdout
    victim = containers.split()[0]
    networks = json.loads(swarm.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", victim).stdout)
    address = next(f"{n['IPAddress']}:5003" for name, n in networks.items() if name.startswith(PREFIX))
    assert address in swarm.ready()
    with Load(swarm) as load:
        time.sleep(1)
        killed = time.monotonic()
        swarm.docker("kill", victim)
        wait_for(lambda: address not in swarm.ready(), 2, f"the gateway to stop routing to {address}", interval=0.05)
        out_after = time.monotonic() - killed
        time.sleep(2)
    failed = load.failed()
    FIGURES.append(f"docker kill: routed around after {out_after:.2f}s, {len(failed)} of {len(load.results)} failed")
    assert len(failed) <= CLIENTS, failed  # at most what the killed replica held
    assert all(t - killed < 2 for t, _, _, _ in failed), failed
    late = [r for r in load.results if r[0] > killed + 2]
    assert late and all(status == 200 for _, status, _, _ in late)
    assert out_after < 2


def test_jobs_outlive_a_killed_gateway_task_through_the_redis_service(swarm: Swarm) -> None:
    """A backlog of jobs submitted, the gateway's container killed: Swarm starts a new gateway
    task (a new container, a new cache volume) that finds every job in Redis and runs it; those
    that were running run again once the dead task's lease (JOB_LEASE_S, 30 s) has run out."""
    count = 2000
    lines = "\n".join(json.dumps({"SIGNATURE": "dummy_model_demo1", "INPUT_VALUE": i, "custom_id": str(i)})
                      for i in range(count))
    submitted = swarm.session.post(swarm.url + "/batches", data=lines, timeout=60,
                                   headers={"Content-Type": "application/x-ndjson"})
    assert submitted.status_code == 202, submitted.text
    batch = submitted.json()["BATCH_ID"]
    gateway = swarm.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={PREFIX}_gateway").stdout
    killed = time.monotonic()
    swarm.docker("kill", gateway.split()[0])

    def finished() -> dict | None:
        try:
            counts = swarm.session.get(f"{swarm.url}/batches/{batch}", timeout=5).json()["COUNTS"]
        except (requests.RequestException, ValueError, KeyError):
            return None  # the new gateway task is not up yet
        return counts if counts["QUEUED"] + counts["RUNNING"] == 0 else None

    counts = wait_for(finished, 180, "the new gateway task to run every job of the batch", interval=1)
    drained = time.monotonic() - killed
    assert counts["SUCCEEDED"] == count, (counts, swarm.logs())
    results = swarm.session.get(f"{swarm.url}/batches/{batch}/results", timeout=60).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in results] == [str(i) for i in range(count)]
    reruns, cursor = 0, None
    while True:  # every job's attempts, a page of the listing at a time
        page = swarm.session.get(swarm.url + "/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})},
                                 timeout=30).json()
        reruns += sum(job["ATTEMPTS"] - 1 for job in page["JOBS"])
        cursor = page["NEXT_CURSOR"]
        if not cursor:
            break
    FIGURES.append(f"jobs: {count} queued, gateway task killed, all SUCCEEDED {drained:.0f}s later, {reruns} re-run(s)")
    assert reruns <= 2  # at most the jobs running at the kill (the endpoint's 2 workers)
