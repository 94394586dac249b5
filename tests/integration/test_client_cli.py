"""The Python client and ``bis`` against a real gateway running the shipped demo endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, TOKEN, Gateway, free_port_block, make_app

from basic_inference_server.client import BadInput, Client, Unauthorized, UnknownSignature

DEMO_FILES = [REPO / "endpoints" / name for name in ("dummy_model_demo1.py", "dummy_model_demo2.py",
                                                     "support_process.py")]
DEMO_NAMES = {"dummy_model_demo1", "dummy_model_demo2"}


def demo_config() -> dict:
    return json.loads((REPO / "config_gateway.txt").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One gateway with the shipped demo (two model servers, one support process) for the module."""
    gateway = Gateway(make_app(tmp_path_factory.mktemp("client"), demo_config(), DEMO_FILES)).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


def bis(*args: str) -> subprocess.CompletedProcess:
    """``python -m basic_inference_server.client *args``, without BIS_URL or a token from the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("BIS_URL", "BIS_ADMIN_TOKEN")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "basic_inference_server.client", *args], env=env,
                          capture_output=True, text=True, timeout=30)


# -- Client -------------------------------------------------------------------------------------
def test_client_runs_the_demo_endpoints(demo):
    with Client(demo.url, timeout=10) as client:
        answer = client.run("dummy_model_demo2", INPUT_VALUE=3)
        word = client.run("dummy_model_demo1", INPUT_VALUE="casa", LANGUAGE="ro")
    assert answer["predict_result"] == {"dummy_model_predict": "3*0 + 0 = 0 PREDICTED"}
    assert answer["signature"].split(".")[1] == "dummy_model_demo2" and "gw-uptime" in answer
    assert word["predict_result"]["dummy_model_a_predict"] == "same-word-always"


def test_client_raises_typed_errors(demo):
    with Client(demo.url, timeout=10) as client:
        with pytest.raises(UnknownSignature) as unknown:
            client.run("no_such_model", INPUT_VALUE=3)
        with pytest.raises(BadInput) as bad:
            client.run("dummy_model_demo2")
    assert unknown.value.status == 404 and unknown.value.error_type == "UnknownSignature"
    assert "no_such_model" in unknown.value.message
    assert (bad.value.status, bad.value.error_type) == (400, "InvalidInput")
    assert bad.value.message == "INPUT_VALUE should be defined in inputs"


def test_client_status_routes(demo):
    with Client(demo.url, timeout=10) as client:
        assert client.health() and client.ready()
        servers = client.list_servers()
        status = client.system_status()
        client.run("dummy_model_demo2", INPUT_VALUE=5)
        notes = client.notifications("dummy_model_demo2")
        everyone = client.notifications()
    assert set(servers["AVAIL_SERVERS"]) == DEMO_NAMES
    assert all(s["STATE"] == "READY" for s in servers["AVAIL_SERVERS"].values())
    assert set(servers["SUPPORT_PROCESSES"]) == {"support_process"}
    assert status["SYSTEM_STATUS"]["server_name"] == "base_server" and "SYSTEM_ALERTS" in status
    messages = [n["NOTIF"] for items in notes.values() if isinstance(items, list) for n in items]
    assert "Predicting on 5" in messages, notes
    assert set(everyone) == DEMO_NAMES


def test_shutdown_needs_the_token_and_stops_the_gateway(gateway_factory):
    gateway = gateway_factory(demo_config(), DEMO_FILES)
    with Client(gateway.url, timeout=10) as anonymous, pytest.raises(Unauthorized) as refused:
        anonymous.shutdown()
    assert refused.value.status == 401
    no_token = bis("--url", gateway.url, "shutdown")
    assert no_token.returncode == 1 and "BIS_ADMIN_TOKEN" in no_token.stderr
    assert gateway.proc.poll() is None  # still running

    with Client(gateway.url, token=TOKEN, timeout=10) as admin:
        assert admin.shutdown()["MESSAGE"].startswith("OK. Shutting down")
        assert gateway.proc.wait(timeout=30) == 0
        assert admin.health() is False


# -- bis ----------------------------------------------------------------------------------------
def test_cli_servers_prints_a_table_and_json(demo):
    table = bis("--url", demo.url, "servers")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "PID", "PORT", "WORKERS", "BUSY", "QUEUE", "RESTARTS", "UPTIME"]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert set(rows) == DEMO_NAMES
    assert all(row[1] == "READY" and row[4] == "2/2" for row in rows.values())
    assert "support_process" in table.stdout

    raw = bis("--url", demo.url, "servers", "--json")
    assert raw.returncode == 0, raw.stderr
    assert set(json.loads(raw.stdout)["AVAIL_SERVERS"]) == DEMO_NAMES


def test_cli_run_status_and_notifications(demo):
    run = bis("--url", demo.url, "run", "dummy_model_demo2", "INPUT_VALUE=3")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"dummy_model_predict": "3*0 + 0 = 0 PREDICTED"}
    status = bis("--url", demo.url, "status")
    assert status.returncode == 0 and status.stdout.startswith("server") and "base_server" in status.stdout
    notes = bis("--url", demo.url, "notifications", "dummy_model_demo2")
    assert notes.returncode == 0 and "Predicting on 3" in notes.stdout


def test_cli_unknown_signature_exits_4(demo):
    result = bis("--url", demo.url, "run", "no_such_model", "INPUT_VALUE=3")
    assert result.returncode == 4 and result.stdout == ""
    assert result.stderr.startswith("bis: error: HTTP 404 UnknownSignature") and result.stderr.count("\n") == 1


def test_cli_exits_3_when_nothing_listens():
    result = bis("--url", f"http://127.0.0.1:{free_port_block(1)}", "--timeout", "2", "servers")
    assert result.returncode == 3
    assert "cannot connect" in result.stderr and "Connection refused" in result.stderr
