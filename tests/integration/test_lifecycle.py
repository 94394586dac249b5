"""Starting, failing, stopping: the gateway and its servers as processes."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import ECHO_CONFIG, FIXTURES, SERVER_PORTS, Gateway, make_app


def echo_config(**endpoints) -> dict:
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"].update(endpoints)
    return config


def test_shutdown_answers_then_drains_and_exits_cleanly(gateway_factory):
    gateway = gateway_factory(echo_config())
    slow: dict = {}

    def slow_call():
        slow["reply"] = gateway.run("echo", VALUE="slow", SLEEP=1.5)

    worker = threading.Thread(target=slow_call)
    worker.start()
    gateway.wait_workers("echo", busy=1)  # the slow request is in flight
    reply = gateway.admin("/shutdown", {"SIGNATURE": "safe_kill_server_cmd"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["MESSAGE"].startswith("OK")
    worker.join(10)
    assert slow["reply"].status_code == 200, slow["reply"].text
    assert slow["reply"].json()["predict_result"]["echo"] == "slow"
    assert gateway.proc.wait(15) == 0
    gateway.assert_nothing_left()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_everything_with_exit_0(gateway_factory, sig):
    gateway = gateway_factory(echo_config())
    gateway.proc.send_signal(sig)
    assert gateway.proc.wait(15) == 0
    gateway.assert_nothing_left()


def test_children_exit_when_the_gateway_is_killed(gateway_factory):
    gateway = gateway_factory(echo_config())
    children = psutil.Process(gateway.proc.pid).children(recursive=True)
    assert len(children) == 3  # two model servers and the support process
    os.kill(gateway.proc.pid, signal.SIGKILL)
    gateway.proc.wait(5)
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"children still alive: {alive}"


def test_killed_server_answers_fast_and_is_restarted_on_its_port(gateway_factory):
    gateway = gateway_factory(echo_config())
    before = gateway.servers()["echo"]
    os.kill(before["PID"], signal.SIGKILL)
    started = time.monotonic()
    reply = gateway.run("echo", VALUE=1)
    assert time.monotonic() - started < 1.0
    assert reply.status_code in (502, 503), reply.text
    assert reply.json()["error"]["type"] in ("ServerDied", "ServerUnavailable")
    assert gateway.run("echo_b", VALUE=2).status_code == 200  # the other endpoint is unaffected

    deadline = time.monotonic() + 1.0
    while gateway.servers()["echo"]["STATE"] == "READY" and time.monotonic() < deadline:
        time.sleep(0.02)
    during = gateway.run("echo", VALUE=1)
    if during.status_code != 200:  # still restarting: 503 with Retry-After
        assert during.status_code == 503 and int(during.headers["Retry-After"]) >= 1, during.text

    after = gateway.wait_state("echo", "READY", timeout=10)
    assert time.monotonic() - started < 10
    assert after["PID"] != before["PID"] and after["PORT"] == before["PORT"]
    assert after["RESTARTS"] == 1 and after["LAST_EXIT_CODE"] == -9
    assert gateway.run("echo", VALUE=3).json()["predict_result"]["echo"] == 3
    history = gateway.get("/system_status").json()["SYSTEM_HISTORY"]
    assert history["RESTARTS"] == {"echo": 1}
    assert any(e["event"] == "RESTART" and e["name"] == "echo" for e in history["EVENTS"])


def test_full_queue_answers_503_at_once_and_the_queued_request_is_served(gateway_factory):
    gateway = gateway_factory(echo_config(tiny={"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "MAX_QUEUE": 1}))
    results: dict = {}

    def call(key):
        results[key] = gateway.run("tiny", VALUE=key, SLEEP=1.0)

    first = threading.Thread(target=call, args=("running",))
    first.start()
    gateway.wait_workers("tiny", busy=1)
    second = threading.Thread(target=call, args=("queued",))
    second.start()
    gateway.wait_workers("tiny", busy=1, queue=1)
    started = time.monotonic()
    rejected = gateway.run("tiny", VALUE="rejected")
    assert time.monotonic() - started < 0.5
    assert rejected.status_code == 503, rejected.text
    assert rejected.json()["error"]["type"] == "Overloaded" and rejected.headers["Retry-After"]
    first.join(10)
    second.join(10)
    assert results["running"].json()["predict_result"]["echo"] == "running"
    assert results["queued"].json()["predict_result"]["echo"] == "queued"


def test_request_in_flight_on_a_dying_server_gets_502(gateway_factory):
    gateway = gateway_factory(echo_config())
    pid = gateway.servers()["echo"]["PID"]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(reply=gateway.run("echo", VALUE=1, SLEEP=1.5)))
    thread.start()
    gateway.wait_workers("echo", busy=1)
    os.kill(pid, signal.SIGKILL)
    thread.join(5)
    assert result["reply"].status_code == 502, result["reply"].text
    assert result["reply"].json()["error"]["type"] == "ServerDied"


def test_kill_start_and_resize_servers(gateway_factory):
    gateway = gateway_factory(echo_config())
    killed = gateway.admin("/kill_server", {"SIGNATURE": "echo_b"})
    assert killed.status_code == 200, killed.text
    assert killed.json()["KILLED"]["echo_b"]["RETURN_CODE"] == 0  # it stopped on SIGTERM, cleanly
    assert gateway.servers()["echo_b"]["STATE"] == "STOPPED"
    assert gateway.run("echo_b", VALUE=1).status_code == 503
    assert gateway.admin("/start_server", {"SIGNATURE": "echo"}).status_code == 409  # already running
    assert gateway.admin("/start_server", {"SIGNATURE": "nope"}).status_code == 404
    assert gateway.admin("/start_server", {"SIGNATURE": "helper"}).status_code == 409  # support, running

    # A disabled endpoint can be started explicitly.
    assert gateway.admin("/start_server", {"SIGNATURE": "echo_off"}).status_code == 202
    gateway.wait_state("echo_off", "READY")
    assert gateway.run("echo_off", VALUE="on").json()["predict_result"]["echo"] == "on"

    grown = gateway.admin("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 4})
    assert grown.status_code == 200, grown.text
    deadline = time.monotonic() + 5
    while gateway.servers()["echo"]["WORKERS"]["ready"] != 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.servers()["echo"]["WORKERS"]["ready"] == 4
    shrunk = gateway.admin("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 1})
    assert shrunk.status_code == 200
    deadline = time.monotonic() + 5
    while gateway.servers()["echo"]["WORKERS"]["ready"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.servers()["echo"]["WORKERS"]["ready"] == 1
    assert gateway.run("echo", VALUE="after-shrink").status_code == 200

    everything = gateway.admin("/kill_server", {"SIGNATURE": "*"})
    assert set(everything.json()["KILLED"]) == {"echo", "echo_off", "helper"}
    listing = gateway.post("/list_servers").json()
    for info in [*listing["AVAIL_SERVERS"].values(), *listing["SUPPORT_PROCESSES"].values()]:
        assert info["STATE"] == "STOPPED" and info["PID"] is None
    time.sleep(1.5)  # the supervisor must not resurrect what an admin stopped
    assert all(s["STATE"] == "STOPPED" for s in gateway.servers().values())
    assert gateway.get("/health").status_code == 200


def test_broken_model_is_failed_with_its_error_and_others_serve(gateway_factory):
    config = echo_config(broken={"SERVER_CLASS": "broken_load", "NR_WORKERS": 2},
                         no_import={"SERVER_CLASS": "broken_import", "NR_WORKERS": 1},
                         typo={"NR_WORKERS": 1}, classless={"NR_WORKERS": 1})
    gateway = gateway_factory(config, start=False)
    endpoints = gateway.app_dir / "endpoints"
    (endpoints / "typo.py").write_text("class TypoWorker:\n    def oops(:\n        pass\n")
    (endpoints / "classless.py").write_text("class SomethingElse:\n    pass\n")
    gateway.start(wait_ready=False)
    broken = gateway.wait_state("broken", "FAILED")
    assert "weights.bin not found" in broken["ERROR"] and broken["LAST_EXIT_CODE"] == 3
    no_import = gateway.wait_state("no_import", "FAILED")
    assert "not installed" in no_import["ERROR"]
    typo = gateway.wait_state("typo", "FAILED")
    assert "typo.py: syntax error at line 2" in typo["ERROR"], typo
    classless = gateway.wait_state("classless", "FAILED")
    assert "no worker class for 'classless' (expected a class named like ClasslessWorker)" in classless["ERROR"]
    reply = gateway.run("broken", VALUE=1)
    assert reply.status_code == 503 and "weights.bin not found" in reply.json()["ERROR"]
    reply = gateway.run("typo", VALUE=1)
    assert reply.status_code == 503 and "syntax error at line 2" in reply.json()["ERROR"]
    gateway.wait_state("echo", "READY")
    gateway.wait_state("echo_b", "READY")
    ready = gateway.get("/ready")
    assert ready.status_code == 503
    assert set(ready.json()["NOT_READY"]) == {"broken", "no_import", "typo", "classless"}
    assert gateway.run("echo", VALUE=1).status_code == 200
    assert "the endpoint is FAILED, the others start" in gateway.output()

    # Fixed, and picked up by a reload of the configuration: started again (the others untouched).
    (endpoints / "typo.py").write_text((endpoints / "echo_model.py").read_text().replace("EchoModelWorker",
                                                                                          "TypoWorker"))
    pid = gateway.servers()["echo"]["PID"]
    reloaded = gateway.admin("/reload_config", {})
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["CHANGED"] == ["typo"] and reloaded.json()["STARTED"] == ["typo"]
    gateway.wait_state("typo", "READY")
    assert gateway.run("typo", VALUE=7).json()["predict_result"]["echo"] == 7
    assert gateway.servers()["echo"]["PID"] == pid


def test_starting_server_answers_503_with_retry_after(gateway_factory):
    config = echo_config(slow_load={"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "LOAD_SECONDS": 3})
    gateway = gateway_factory(config, wait_ready=False)
    gateway.wait_state("echo", "READY")
    gateway.wait_state("echo_b", "READY")
    reply = gateway.run("slow_load", VALUE=1)
    assert reply.status_code == 503 and reply.headers["Retry-After"]
    assert reply.json()["error"]["type"] == "ServerUnavailable"
    assert gateway.get("/ready").json()["NOT_READY"] == {"slow_load": "STARTING"}
    gateway.wait_state("slow_load", "READY")
    assert gateway.run("slow_load", VALUE=1).status_code == 200


def run_cli(gateway: Gateway, *extra: str) -> subprocess.CompletedProcess:
    """Run the gateway's command line to completion (for startups that must fail)."""
    args = ["--host", "127.0.0.1", "--port", str(gateway.port), "--first_server_port",
            str(gateway.first_server_port), *extra]
    if "--last_server_port" not in extra:
        args += ["--last_server_port", str(gateway.first_server_port + SERVER_PORTS - 1)]
    return subprocess.run([sys.executable, "-m", "basic_inference_server.gateway.cli", *args],
                          cwd=gateway.app_dir, env=gateway.env, capture_output=True, text=True, timeout=30)


def _start_expecting_failure(tmp_path, config, files=None, raw_config=None, extra=()):
    app = make_app(tmp_path, config, files)
    if raw_config is not None:
        (app / "config_gateway.txt").write_text(raw_config)
    gateway = Gateway(app)
    return run_cli(gateway, *extra), gateway


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ({"SERVER_CLASS": "echo_model", "NR_WORKERS": 0}, "CONFIG_ENDPOINTS.bad.NR_WORKERS: expected an integer >= 1"),
        ({"SERVER_CLASS": "echo_model", "NR_WORKERS": "2"}, "CONFIG_ENDPOINTS.bad.NR_WORKERS"),
        ({"SERVER_CLASS": "no_such_file"}, "no endpoint file for 'no_such_file'"),
        ({"SERVER_CLASS": "broken_load", "DISABLED": "yes"}, "CONFIG_ENDPOINTS.bad.DISABLED: expected true or false"),
        ("not-a-dict", "CONFIG_ENDPOINTS.bad: expected an object"),
    ],
)
def test_config_errors_stop_startup_with_one_clear_message(tmp_path, endpoint, message):
    config = echo_config(bad=endpoint)
    proc, gateway = _start_expecting_failure(tmp_path, config)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Starting echo" not in proc.stderr  # no child was started
    gateway.assert_nothing_left(timeout=2)


def test_invalid_json_is_a_config_error(tmp_path):
    proc, _ = _start_expecting_failure(tmp_path, {}, raw_config='{"CONFIG_ENDPOINTS": {')
    assert proc.returncode == 2 and "invalid JSON" in proc.stderr


def test_strict_start_exits_2_on_a_broken_endpoint_file(tmp_path):
    (tmp_path / "one").mkdir()
    wrong = tmp_path / "one" / "wrong_name.py"
    wrong.write_text("from basic_inference_server import FlaskWorker\n\nclass OtherWorker(FlaskWorker):\n    pass\n")
    config = echo_config(wrong_name={"NR_WORKERS": 1})
    files = [wrong, *sorted((FIXTURES / "endpoints").glob("*.py"))]
    proc, gateway = _start_expecting_failure(tmp_path / "a", config, files=files, extra=["--strict"])
    assert proc.returncode == 2, proc.stderr
    assert "no worker class for 'wrong_name'" in proc.stderr and "WrongNameWorker" in proc.stderr
    assert "strict start" in proc.stderr and "Starting echo" not in proc.stderr  # no child was started
    gateway.assert_nothing_left(timeout=2)


def test_strict_startup_key_exits_2_once_a_model_fails_to_load(tmp_path):
    config = echo_config(broken={"SERVER_CLASS": "broken_load", "NR_WORKERS": 1})
    config["STRICT_STARTUP"] = True
    proc, gateway = _start_expecting_failure(tmp_path, config)
    assert proc.returncode == 2, proc.stderr
    assert "weights.bin not found" in proc.stderr and "an endpoint failed to start: stopping" in proc.stderr
    gateway.assert_nothing_left(timeout=2)


def test_busy_gateway_port_is_a_clear_startup_error(tmp_path):
    gateway = Gateway(make_app(tmp_path, echo_config()))
    with socket.socket() as blocker:
        # As the port was checked free (SO_REUSEADDR: a connection of an earlier test may still be in
        # TIME_WAIT on it); listening, it still keeps the gateway from binding it.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", gateway.port))
        blocker.listen()
        proc = run_cli(gateway)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{gateway.port}" in proc.stderr
    assert "Starting echo" not in proc.stderr


def test_busy_server_port_is_skipped(gateway_factory):
    gateway = gateway_factory(echo_config(), start=False)
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the port was checked free
        blocker.bind(("127.0.0.1", gateway.first_server_port))
        blocker.listen()
        gateway.start()
        ports = {name: info["PORT"] for name, info in gateway.servers().items()}
    assert ports == {"echo": gateway.first_server_port + 1, "echo_b": gateway.first_server_port + 2}


def test_running_out_of_server_ports_is_a_startup_error(tmp_path):
    gateway = Gateway(make_app(tmp_path, echo_config()))
    # One port for two servers: the first starts, the second cannot, and the first is stopped.
    proc = run_cli(gateway, "--last_server_port", str(gateway.first_server_port))
    assert proc.returncode == 1, proc.stderr
    assert "no free port left for 'echo_b'" in proc.stderr
    gateway.assert_nothing_left(timeout=5)
    proc = run_cli(gateway, "--last_server_port", "1")
    assert proc.returncode == 2 and "below the first server port" in proc.stderr


def test_override_file_in_cache_data_replaces_top_level_keys(tmp_path, gateway_factory):
    gateway = gateway_factory(echo_config(), start=False)
    override = {"CONFIG_ENDPOINTS": {"only_one": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "PREFIX": "ov"}}}
    data = gateway.app_dir / "_cache" / "_data"
    data.mkdir(parents=True)
    (data / "my_config.json").write_text(json.dumps(override))
    (data / "notes.json").write_text("not a config: ignored")
    gateway.start()
    assert set(gateway.servers()) == {"only_one"}
    assert gateway.run("only_one", VALUE=1).json()["predict_result"]["prefix"] == "ov"


def test_generated_admin_token_is_stored_private_and_never_logged(tmp_path, gateway_factory):
    gateway = gateway_factory(echo_config(), start=False)
    gateway.env.pop("BIS_ADMIN_TOKEN")
    gateway.start()
    token_file = gateway.app_dir / "_cache" / "_data" / "admin_token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert str(token_file) in gateway.output() and token not in gateway.output()
    assert gateway.post("/kill_server", {"SIGNATURE": "echo_b"}).status_code == 401
    ok = gateway.post("/kill_server", {"SIGNATURE": "echo_b"}, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200


def test_endpoint_secrets_are_not_on_command_lines(gateway_factory):
    secret = "sk-very-secret-value-42"
    gateway = gateway_factory(echo_config(echo={"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "API_KEY": secret}))
    procs = [psutil.Process(gateway.proc.pid), *psutil.Process(gateway.proc.pid).children(recursive=True)]
    assert len(procs) == 4  # gateway, two model servers, one support process
    for proc in procs:
        assert secret not in " ".join(proc.cmdline())
        assert gateway.token not in " ".join(proc.cmdline())
    assert secret not in gateway.output()


def test_flat_response_format_for_old_clients(gateway_factory):
    config = echo_config()
    config["CONFIG_ENDPOINTS"]["echo_b"]["RESPONSE_FORMAT"] = "flat"
    gateway = gateway_factory(config)
    flat = gateway.run("echo_b", VALUE=7).json()
    assert flat["echo"] == 7 and "predict_result" not in flat and "call_id" in flat and "ver-lib" in flat
    assert gateway.run("echo", VALUE=7).json()["predict_result"]["echo"] == 7


def test_notifications_are_read_back_and_drained(gateway_factory):
    gateway = gateway_factory(echo_config())
    gateway.run("echo", VALUE="n1", NOTIFY=True)
    first = gateway.post("/notifications", {"SIGNATURE": "echo"}).json()
    entries = [item for key, items in first.items() if isinstance(items, list) for item in items]
    assert any(e["NOTIF"] == "note n1" for e in entries), first
    assert any(e["NOTIF"].startswith("loaded worker") for e in first.get("INIT", []))
    second = gateway.get("/notifications", params={"SIGNATURE": "echo"}).json()
    assert not any(e.get("NOTIF") == "note n1" for items in second.values() if isinstance(items, list)
                   for e in items)

