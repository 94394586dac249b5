"""The Docker image, built from a clean copy of the repository and run for real.

It serves the demo endpoints and reports healthy, stops with exit code 0 on an authorized
``/shutdown`` and on ``docker stop`` (letting the request in flight finish first), keeps its logs
and state history in the volume across runs, reaps orphaned processes as PID 1, and ``run.sh``
starts it again after ``/shutdown`` with the image the tag now names, until Ctrl-C.

The engine and the stand-in base image come from dockerenv.py (an engine is started, and stopped
again, when none runs). Where no engine can be had the tests skip and say why; leave them out with
``-m "not docker"``. Run alone: ``.venv/bin/python -m pytest tests/docker -q``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dockerenv import BASE_IMAGE, DockerError, Engine, EngineUnavailable, run, tail

from basic_inference_server.config import NO_HOST, read_config_file
from basic_inference_server.gateway.supervision.history import FILE_NAME as HISTORY_FILE

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]  # the first test also builds the images

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"bis-image-test-{uuid.uuid4().hex[:8]}"
TOKEN = "image-test-admin-token-0123456789"
HEALTHY_WITHIN = 90.0
STOP_TIMEOUT = 30
CANARY = "planted-by-image-test"  # put where .dockerignore must keep it out of the image
UID = "10001"

# The demo endpoints (by SERVER_CLASS): inputs and what predict_result must hold, as in the README.
DEMO_CALLS: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {
    "dummy_model_demo1": [
        ({"INPUT_VALUE": "house", "LANGUAGE": "en"},
         {"dummy_model_a_predict": "same-word-always", "inputs": {"INPUT_VALUE": "house", "LANGUAGE": "en"}}),
        ({"INPUT_VALUE": 3}, {"dummy_model_a_predict": "3*0 + 0 = 0 PREDICTED"}),
    ],
    "dummy_model_demo2": [({"INPUT_VALUE": 3}, {"dummy_model_predict": "3*0 + 0 = 0 PREDICTED"})],
}

# A second image adds a slow endpoint (the echo test endpoint sleeps SLEEP seconds) for docker stop.
SLOW_DOCKERFILE = """\
FROM {image}
COPY echo_model.py endpoints/
COPY config_slow.txt .
CMD ["python", "run_gateway.py", "--config", "config_slow.txt"]
"""
SLOW_CONFIG = {"SERVER_NAME": "image_test_slow",
               "CONFIG_ENDPOINTS": {"echo_model": {"NR_WORKERS": 2, "HOST": "127.0.0.1"}}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback: never through a proxy
    return session


def wait_for(condition, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def status_of(session: requests.Session, url: str) -> int | None:
    try:
        return session.get(url, timeout=3).status_code
    except requests.RequestException:
        return None


class Container:
    """A container of the image, published on a free loopback port."""

    def __init__(self, lab: Lab, name: str, port: int):
        self.lab, self.name, self.port = lab, name, port
        self.url = f"http://127.0.0.1:{port}"
        self.http = http()

    def state(self) -> dict[str, Any]:
        return json.loads(self.lab.inspect(self.name, "{{json .State}}"))

    def logs(self) -> str:
        done = self.lab.docker("logs", self.name, check=False)
        return done.stdout + done.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return self.lab.docker("exec", self.name, *command, check=False)

    def wait_healthy(self, timeout: float = HEALTHY_WITHIN) -> None:
        """Until docker reports the HEALTHCHECK healthy (/ready answering 200 alone is not enough)."""
        deadline = time.monotonic() + timeout
        ready_at = None
        while True:
            state = self.state()
            if state["Status"] != "running":
                pytest.fail(f"{self.name} is {state['Status']} (exit code {state['ExitCode']}) before being "
                            f"healthy; its output:\n{tail(self.logs(), 40)}")
            health = state.get("Health") or {}
            if health.get("Status") == "healthy":
                return
            if health.get("Status") == "unhealthy":
                last = (health.get("Log") or [{}])[-1]
                pytest.fail(f"{self.name} is unhealthy: last check exit {last.get('ExitCode')}, "
                            f"{last.get('Output')!r}\n{tail(self.logs())}")
            if ready_at is None and status_of(self.http, self.url + "/ready") == 200:
                ready_at = time.monotonic()
            if time.monotonic() > deadline:
                last = (health.get("Log") or [{}])[-1]
                ready = f"/ready answered 200 {time.monotonic() - ready_at:.0f}s ago" if ready_at else "never ready"
                pytest.fail(f"{self.name} not healthy within {timeout:g}s (health {health.get('Status')!r}, {ready}); "
                            f"last check: exit {last.get('ExitCode')}, {last.get('Output')!r}\n{tail(self.logs())}")
            time.sleep(0.25)

    def wait_exit(self, timeout: float = 60) -> int:
        done = self.lab.docker("wait", self.name, timeout=timeout)
        return int(done.stdout.strip())

    def post(self, path: str, body: dict[str, Any], token: str | None = None, timeout: float = 30) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post(self.url + path, json=body, headers=headers, timeout=timeout)


class Lab:
    """The engine, the images built for this run, and everything to remove at the end."""

    def __init__(self, engine: Engine, workdir: Path):
        self.engine = engine
        self.workdir = workdir
        self.image = f"{PREFIX}:latest"
        self.slow_image = f"{PREFIX}-slow:latest"
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.images: list[str] = []
        self.timings: list[str] = []

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.engine.docker(*args, **kwargs)

    # -- images --------------------------------------------------------------------------------
    def build_images(self) -> None:
        started = time.monotonic()
        context = clean_copy(self.workdir / "context")
        self.images.append(self.image)
        self.docker("build", "--force-rm", "-t", self.image, str(context), timeout=480)
        self.timings.append(f"project image built in {time.monotonic() - started:.0f}s")
        slow = self.workdir / "slow"
        slow.mkdir()
        (slow / "Dockerfile").write_text(SLOW_DOCKERFILE.format(image=self.image), encoding="utf-8")
        shutil.copy(REPO / "tests" / "fixtures" / "endpoints" / "echo_model.py", slow / "echo_model.py")
        (slow / "config_slow.txt").write_text(json.dumps(SLOW_CONFIG), encoding="utf-8")
        self.images.append(self.slow_image)
        self.docker("build", "--force-rm", "-t", self.slow_image, str(slow), timeout=120)

    def image_id(self, image: str) -> str:
        return self.docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()

    # -- containers and volumes ----------------------------------------------------------------
    def volume(self) -> str:
        name = f"{PREFIX}-vol{len(self.volumes)}"
        self.volumes.append(name)
        self.docker("volume", "create", name)
        return name

    def start(self, image: str, volume: str) -> Container:
        name = f"{PREFIX}-{len(self.containers)}"
        self.containers.append(name)
        port = free_port()
        self.docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5002", "-v", f"{volume}:/aid_app/_cache",
                    "-e", "BIS_ADMIN_TOKEN", "--health-interval=1s", image,
                    env=dict(os.environ, BIS_ADMIN_TOKEN=TOKEN))
        return Container(self, name, port)

    def inspect(self, container: str, template: str, check: bool = True) -> str:
        """A field of a container (--type: an image and a volume may share a name with it)."""
        done = self.docker("inspect", "--type", "container", "--format", template, container, check=check)
        return done.stdout.strip()

    def in_volume(self, volume: str, *command: str) -> str:
        """Run ``command`` in a throw-away container of the base image with the volume on /v."""
        return self.docker("run", "--rm", "--network", "none", "-v", f"{volume}:/v", BASE_IMAGE, *command).stdout

    def cleanup(self) -> None:
        for name in self.containers:
            self.docker("rm", "--force", "--volumes", name, check=False)
        for name in self.volumes:
            self.docker("volume", "rm", "--force", name, check=False)
        for image in reversed(self.images):  # with their untagged layers; the base image stays
            self.docker("rmi", "--force", image, check=False, timeout=120)
        left = self.docker("ps", "-a", "--quiet", "--filter", f"name={PREFIX}", check=False).stdout.split()
        left += self.docker("volume", "ls", "--quiet", "--filter", f"name={PREFIX}", check=False).stdout.split()
        assert not left, f"left behind: {left}"


def clean_copy(dest: Path) -> Path:
    """The repository's files (tracked, and new ones git does not ignore) plus planted files that
    .dockerignore must keep out: the build sees what a fresh clone with a used cache would hold."""
    try:
        listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], timeout=60,
                     cwd=REPO).stdout.split("\0")
    except (DockerError, OSError):
        listed = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                  if not {".git", ".venv", "_cache", "__pycache__"} & set(p.relative_to(REPO).parts)]
    for relative in filter(None, listed):
        source = REPO / relative
        if source.is_file():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / relative)
    for folder in ("_cache/_data", ".venv", ".git", "bench/results"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        (dest / folder / CANARY).write_text("must not be in the image\n", encoding="utf-8")
    return dest


def say(config: pytest.Config, text: str) -> None:
    """Write to the terminal past pytest's output capture (a skip must not go unnoticed)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(text, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        print(text, file=sys.stderr)


def engine_or_skip(config: pytest.Config, workdir: Path, what: str) -> Engine:
    """The engine, with the base image; else the test is skipped, saying why on the terminal."""
    engine = Engine(workdir)
    try:
        engine.start()
        engine.ensure_base_image()
    except EngineUnavailable as exc:
        engine.close()
        shutil.rmtree(workdir, ignore_errors=True)
        say(config, f"\n*** SKIPPING the {what}: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    return engine


@pytest.fixture(scope="module")
def lab(pytestconfig: pytest.Config) -> Iterator[Lab]:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bis-image-test-"))
    engine = engine_or_skip(pytestconfig, workdir, "Docker image tests")
    the_lab = Lab(engine, workdir)
    try:
        the_lab.build_images()
        yield the_lab
    finally:
        try:
            the_lab.cleanup()
        finally:
            notes = engine.notes + the_lab.timings
            if engine.started_here:
                notes.append("stopped the dockerd started here")
            engine.close()
            shutil.rmtree(workdir, ignore_errors=True)
            notes.append(f"{time.monotonic() - started:.0f}s in all")
            say(pytestconfig, f"\n[docker image tests] {'; '.join(notes)}")


def enabled_demo_endpoints() -> dict[str, str]:
    """name -> SERVER_CLASS of the model servers config_gateway.txt starts."""
    endpoints = read_config_file(REPO / "config_gateway.txt")["CONFIG_ENDPOINTS"]
    return {name: entry.get("SERVER_CLASS", name) for name, entry in endpoints.items()
            if entry.get("HOST") != NO_HOST and not entry.get("DISABLED")}


# -- tests -----------------------------------------------------------------------------------------


def test_image_holds_the_app_but_not_the_cache_venvs_or_tests(lab: Lab) -> None:
    listing = lab.docker("run", "--rm", "--network", "none", lab.image, "sh", "-c",
                         "id -u; pwd; ls -A; echo ---; ls -A _cache; echo ---; stat -c %u _cache").stdout
    uid, workdir, rest = listing.split("\n", 2)
    files, cache, owner = (part.split() for part in rest.split("---\n"))
    assert (uid, workdir) == (UID, "/aid_app")
    assert {"run_gateway.py", "app_ver.py", "config_gateway.txt", "endpoints", "basic_inference_server"} <= set(files)
    assert not {".git", ".venv", "tests", "bench", ".pytest_cache"} & set(files), files
    assert cache == [], f"the image's _cache would seed every new volume: {cache}"
    assert owner == [UID], "a new named volume takes the owner of the mount point"
    config = json.loads(lab.docker("image", "inspect", "--format", "{{json .Config}}", lab.image).stdout)
    assert {f"{port}/tcp" for port in range(5002, 5011)} == set(config["ExposedPorts"])
    assert list(config["Volumes"]) == ["/aid_app/_cache"] and config["StopSignal"] == "SIGTERM"
    assert config["Cmd"] == ["python", "run_gateway.py"] and not config.get("Entrypoint")


def test_demo_endpoints_shutdown_and_a_second_run_on_the_same_volume(lab: Lab) -> None:
    volume = lab.volume()
    first = lab.start(lab.image, volume)
    first.wait_healthy()
    assert first.exec("cat", "/proc/1/cmdline").stdout.split("\0")[:2] == ["python", "run_gateway.py"]
    assert first.exec("id", "-u").stdout.strip() == UID

    endpoints = enabled_demo_endpoints()
    assert endpoints, "config_gateway.txt starts no model server"
    for name, server_class in endpoints.items():
        assert server_class in DEMO_CALLS, f"no demo payload for {name} ({server_class}): add one to DEMO_CALLS"
        for inputs, expected in DEMO_CALLS[server_class]:
            reply = first.post("/run", {"SIGNATURE": name, **inputs})
            assert reply.status_code == 200, reply.text
            result = reply.json()["predict_result"]
            assert {k: result.get(k) for k in expected} == expected, result
    listed = first.post("/list_servers", {}).json()
    assert set(listed["AVAIL_SERVERS"]) == set(endpoints)
    assert all(server["STATE"] == "READY" for server in listed["AVAIL_SERVERS"].values()), listed
    assert "support_process" in listed["SUPPORT_PROCESSES"]

    shutdown = {"SIGNATURE": "SAFE_KILL_SERVER_CMD"}
    assert first.post("/shutdown", shutdown, token="wrong-token-0123456789").status_code == 401
    assert first.post("/shutdown", shutdown, token=TOKEN).status_code == 200
    assert first.wait_exit() == 0
    logs = first.logs()
    assert "Starting BaseAidApp" in logs and "Docker: True" in logs, tail(logs)  # AID_APP_ID, AID_APP_DOCKER
    assert TOKEN not in logs

    second = lab.start(lab.image, volume)
    second.wait_healthy()
    assert second.post("/shutdown", shutdown, token=TOKEN).status_code == 200
    assert second.wait_exit() == 0

    history = json.loads(lab.in_volume(volume, "cat", f"/v/_data/{HISTORY_FILE}"))
    events = [event["event"] for event in history["EVENTS"]]
    assert events.count("STARTUP") == 2 and events.count("SHUTDOWN") == 2, events
    assert history["PREVIOUS_STARTUP"]
    log_files = lab.in_volume(volume, "ls", "/v/_logs").split()
    assert {"gateway.log", *(f"server_{name}.log" for name in endpoints)} <= set(log_files), log_files
    gateway_log = lab.in_volume(volume, "cat", "/v/_logs/gateway.log")
    assert gateway_log.count("Gateway listening") == 2


def test_gateway_as_pid_1_reaps_orphaned_processes(lab: Lab) -> None:
    container = lab.start(lab.image, lab.volume())
    container.wait_healthy()
    # The shell exits at once; its background sleep is handed to PID 1, the gateway.
    started = container.exec("sh", "-c", "sleep 2 > /dev/null 2>&1 & echo $!")
    orphan = started.stdout.strip()
    assert orphan.isdigit(), started
    status = container.exec("cat", f"/proc/{orphan}/status").stdout
    assert "\nPPid:\t1\n" in status, status

    def reaped() -> bool:
        stat = container.exec("cat", f"/proc/{orphan}/stat")
        return stat.returncode != 0  # gone; a zombie would still be listed, state Z

    wait_for(reaped, 15, f"the gateway (PID 1) to reap the orphaned sleep (pid {orphan}); it stays a zombie")
    lab.docker("stop", "--time", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30)
    assert container.state()["ExitCode"] == 0


def test_docker_stop_lets_the_request_in_flight_finish(lab: Lab) -> None:
    container = lab.start(lab.slow_image, lab.volume())
    container.wait_healthy()
    answers: list[requests.Response | Exception] = []

    def slow_request() -> None:
        try:
            answers.append(container.post("/run", {"SIGNATURE": "echo_model", "VALUE": 42, "SLEEP": 6}, timeout=60))
        except requests.RequestException as exc:
            answers.append(exc)

    client = threading.Thread(target=slow_request)
    client.start()

    def busy() -> bool:
        servers = container.post("/list_servers", {}).json()["AVAIL_SERVERS"]
        return servers["echo_model"]["WORKERS"].get("busy", 0) >= 1

    wait_for(busy, 5, "the slow request to reach a worker")
    started = time.monotonic()
    lab.docker("stop", "--time", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30)
    stopped_in = time.monotonic() - started
    client.join(30)
    assert answers and isinstance(answers[0], requests.Response), answers
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["predict_result"]["echo"] == 42
    state = container.state()
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert stopped_in < STOP_TIMEOUT, f"docker stop took {stopped_in:.1f}s: the gateway was killed, not stopped"
    assert "Shutting down: 1 request(s) in flight" in container.logs()


def test_the_image_runs_one_endpoint_on_its_own(lab: Lab) -> None:
    """`docker run <image> endpoint <name>`: that endpoint's model server alone, healthy by its own
    /health (BIS_HEALTH_URL), guarded by BIS_ENDPOINT_TOKEN, and stopped cleanly by docker stop."""
    name = f"{PREFIX}-{len(lab.containers)}"
    lab.containers.append(name)
    port, secret = free_port(), "image-endpoint-secret-0123"
    lab.docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5003", "-e", "BIS_ENDPOINT_TOKEN",
               "-e", "BIS_HEALTH_URL=http://127.0.0.1:5003/health", "--health-interval=1s", lab.image,
               "endpoint", "dummy_model_demo2", "--host", "0.0.0.0", "--port", "5003",
               env=dict(os.environ, BIS_ENDPOINT_TOKEN=secret))
    server = Container(lab, name, port)
    server.wait_healthy()
    assert server.exec("cat", "/proc/1/cmdline").stdout.split("\0")[:3] == ["python", "/aid_app/run_gateway.py",
                                                                        "endpoint"]
    url = f"{server.url}/run"
    assert server.http.post(url, json={"INPUT_VALUE": 3}, timeout=30).status_code == 401
    answer = server.http.post(url, json={"INPUT_VALUE": 3}, headers={"X-Endpoint-Token": secret}, timeout=30)
    assert answer.status_code == 200 and answer.json()["predict_result"] == {
        "dummy_model_predict": "3*0 + 0 = 0 PREDICTED"}
    lab.docker("stop", "-t", str(STOP_TIMEOUT), name, timeout=STOP_TIMEOUT + 30)
    assert server.wait_exit() == 0
    assert secret not in server.logs()


def test_run_sh_restarts_after_shutdown_with_the_new_image_and_stops_on_ctrl_c(lab: Lab) -> None:
    tag = f"{PREFIX}-runsh:latest"
    lab.images.append(tag)
    lab.docker("tag", lab.image, tag)
    name = f"{PREFIX}-runsh"
    lab.containers.append(name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    session = http()
    env = dict(os.environ, IMAGE=tag, VOLUME=lab.volume(), NAME=name, PORTS=f"127.0.0.1:{port}:5002", PULL="never",
               BIS_ADMIN_TOKEN=TOKEN, RESTART_DELAY="1", STOP_TIMEOUT=str(STOP_TIMEOUT))
    output = lab.workdir / "run_sh.log"
    with open(output, "wb") as out:
        # As from a terminal: a test run in the background inherits SIGINT ignored, and a shell
        # cannot trap a signal ignored when it started.
        keeper = subprocess.Popen(["bash", str(REPO / "run.sh")], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def container_id() -> str:
            return lab.inspect(name, "{{.Id}}", check=False)

        def ready() -> bool:
            assert keeper.poll() is None, f"run.sh exited early:\n{output.read_text(errors='replace')}"
            return status_of(session, url + "/ready") == 200

        wait_for(ready, HEALTHY_WITHIN, "the gateway started by run.sh to be ready")
        first_id = container_id()
        lab.docker("tag", lab.slow_image, tag)  # a new version of the image, as a pull would bring
        reply = session.post(url + "/shutdown", json={"SIGNATURE": "SAFE_KILL_SERVER_CMD"},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert reply.status_code == 200, reply.text  # run.sh passed BIS_ADMIN_TOKEN through
        wait_for(lambda: container_id() not in ("", first_id) and ready(), HEALTHY_WITHIN,
                 "run.sh to start the container again")
        assert lab.inspect(name, "{{.Image}}") == lab.image_id(lab.slow_image)
        assert "echo_model" in session.post(url + "/list_servers", json={}, timeout=10).json()["AVAIL_SERVERS"]

        os.killpg(keeper.pid, signal.SIGINT)  # Ctrl-C in the terminal that runs it
        try:
            code = keeper.wait(STOP_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            pytest.fail("run.sh did not stop after Ctrl-C; its output:\n" + output.read_text(errors="replace")
                        + "\ncontainers:\n" + lab.docker("ps", "-a", check=False).stdout)
        assert code == 0, output.read_text(errors="replace")
    finally:
        if keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGKILL)
            keeper.wait()
    said = output.read_text(errors="replace")
    assert "exited with code 0; starting it again" in said, said
    assert "not restarting" in said, said
    wait_for(lambda: container_id() == "", 10, "docker run --rm to remove the stopped container")
