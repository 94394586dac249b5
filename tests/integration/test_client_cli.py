"""The Python client and ``bis`` against a real gateway: the shipped demo endpoints, and a
streaming test endpoint for ``Client.stream`` and ``bis run --stream``."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import ECHO_CONFIG, FIXTURES, REPO, TOKEN, Gateway, free_port_block, make_app

from basic_inference_server.client import BadInput, Client, ServerError, Unauthorized, UnknownSignature

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


@pytest.fixture(scope="module")
def streaming(tmp_path_factory):
    """One gateway with the streaming test endpoint (N items GAP_MS apart, FAIL_AT, MARK, BAD)."""
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"] = {"stream": {"SERVER_CLASS": "stream_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 5}}
    app = make_app(tmp_path_factory.mktemp("client_stream"), config, [FIXTURES / "endpoints" / "stream_model.py"])
    gateway = Gateway(app).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


def bis_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BIS_URL", "BIS_ADMIN_TOKEN")}
    env["PYTHONPATH"] = str(REPO)
    return env


def bis(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m basic_inference_server.client *args``, without BIS_URL or a token from the environment."""
    return subprocess.run([sys.executable, "-m", "basic_inference_server.client", *args], env=bis_env(),
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def wait_for_text(path: Path, text: str, timeout: float) -> str:
    """The file's text once it is ``text``, or what it holds after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = path.read_text() if path.exists() else ""
        if found == text or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


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
    assert "the token is the BIS_ADMIN_TOKEN the gateway was started with" in refused.value.message
    no_token = bis("--url", gateway.url, "shutdown")
    assert no_token.returncode == 1 and "BIS_ADMIN_TOKEN" in no_token.stderr
    assert gateway.proc.poll() is None  # still running

    with Client(gateway.url, token=TOKEN, timeout=10) as admin:
        assert admin.shutdown()["MESSAGE"].startswith("OK. Shutting down")
        assert gateway.proc.wait(timeout=30) == 0
        assert admin.health() is False


def test_client_stream_yields_the_items_in_order_as_made_then_the_envelope(streaming):
    with Client(streaming.url, timeout=10) as client, client.stream("stream", N=4, GAP_MS=150) as stream:
        items, first_received = [next(stream)], time.time()
        items += list(stream)
    assert [item["i"] for item in items] == [0, 1, 2, 3]
    assert first_received < items[-1]["t"]  # the first came before the model had made the last
    envelope = stream.envelope
    assert envelope["items"] == 4 and envelope["signature"].split(".")[1] == "stream_model"
    assert {"call_id", "worker_id", "time", "ver"} <= set(envelope) and "predict_result" not in envelope
    assert stream.request_id and stream.count == 4


def test_client_stream_left_early_closes_the_models_generator(streaming, tmp_path):
    mark = tmp_path / "mark"
    with Client(streaming.url, timeout=10) as client:
        with client.stream("stream", N=500, GAP_MS=20, MARK=str(mark)) as stream:
            for item in stream:
                if item["i"] == 2:
                    break
        assert wait_for_text(mark, "closed", timeout=2) == "closed"
        assert len(list(client.stream("stream", N=2))) == 2  # the gateway and the pool carry on


def test_client_stream_errors_before_and_after_the_first_item(streaming):
    with Client(streaming.url, timeout=10) as client:
        received = []
        with pytest.raises(ServerError) as mid, client.stream("stream", N=5, FAIL_AT=2) as stream:
            received += stream
        with pytest.raises(ServerError) as before:
            client.stream("stream", FAIL_AT=0)
        with pytest.raises(BadInput) as bad:
            client.stream("stream", BAD=True)
        with pytest.raises(UnknownSignature):
            client.stream("no_such_stream")
    assert [item["i"] for item in received] == [0, 1]
    assert (mid.value.status, mid.value.error_type) == (None, "ModelError")
    assert mid.value.request_id == stream.request_id and "failed at item 2" in mid.value.message
    assert (before.value.status, before.value.error_type) == (500, "ModelError") and before.value.request_id
    assert bad.value.status == 400 and "BAD input refused" in bad.value.message


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


def test_cli_run_stream_prints_json_lines(streaming):
    result = bis("--url", streaming.url, "run", "--stream", "stream", "N=3")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["i"] for line in result.stdout.splitlines()] == [0, 1, 2]
    with_end = bis("--url", streaming.url, "run", "stream", "N=2", "--stream", "--json")
    *items, end = [json.loads(line) for line in with_end.stdout.splitlines()]
    assert [item["i"] for item in items] == [0, 1] and end["END"]["items"] == 2
    failed = bis("--url", streaming.url, "run", "--stream", "stream", "N=3", "FAIL_AT=1")
    assert failed.returncode == 1 and len(failed.stdout.splitlines()) == 1
    assert failed.stderr.startswith("bis: error: ModelError request ") and failed.stderr.count("\n") == 1
    refused = bis("--url", streaming.url, "run", "--stream", "stream", "BAD=true")
    assert refused.returncode == 2 and refused.stdout == "" and "HTTP 400" in refused.stderr


def test_cli_run_stream_prints_as_items_come_and_stops_on_ctrl_c(streaming, tmp_path):
    mark = tmp_path / "mark"
    # SIGINT raises KeyboardInterrupt only where it is not ignored (a test run in the background
    # may ignore it, and a child inherits that).
    proc = subprocess.Popen([sys.executable, "-m", "basic_inference_server.client", "--url", streaming.url,
                             "run", "--stream", "stream", "N=100", "GAP_MS=50", f"MARK={json.dumps(str(mark))}"],
                            env=bis_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()  # bounded: the stream ends by itself after 5 s
        assert json.loads(first)["i"] == 0 and mark.read_text() == "started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 130, err
    assert wait_for_text(mark, "closed", timeout=2) == "closed"
    assert len(out.splitlines()) < 99  # stopped, not run to its end


# -- bis reload: the "Your first endpoint" walk-through --------------------------------------
WORD_SCORE = """from basic_inference_server import FlaskWorker


class WordScoreWorker(FlaskWorker):
    def _load_model(self):
        self.positive = set(self.cfg_positive)

    def _pre_process(self, inputs):
        return inputs["TEXT"].lower().split()

    def _predict(self, words):
        return sum(w in self.positive for w in words) * self.cfg_weight

    def _post_process(self, score):
        return {"score": score}
"""


def test_cli_reload_picks_up_a_new_endpoint_with_the_token_the_gateway_stored(tmp_path):
    """No BIS_ADMIN_TOKEN anywhere: run from the gateway's folder, ``bis reload`` uses the token the
    gateway stored in _cache/_data/admin_token. A file that does not load is reported (exit 1)
    and the others serve; once fixed, a reload starts it; ``bis reload NAME`` replaces its server."""
    app = make_app(tmp_path, copy.deepcopy(ECHO_CONFIG), [FIXTURES / "endpoints" / "echo_model.py",
                                                         FIXTURES / "endpoints" / "helper.py"])
    gateway = Gateway(app, token=None).start()
    try:
        url = ["--url", gateway.url]
        refused = bis(*url, "reload")  # not from the gateway's folder: no token
        assert refused.returncode == 1 and "_cache/_data/admin_token" in refused.stderr, refused.stderr
        raw = requests.post(gateway.url + "/reload_config", timeout=10)  # the 401 itself says where the token is
        assert raw.status_code == 401, raw.text
        assert "the one the gateway generated, in _cache/_data/admin_token" in raw.json()["ERROR"]
        assert str(tmp_path) not in raw.text  # no path of the machine to whoever asks

        config = json.loads((app / "config_gateway.txt").read_text())
        config["CONFIG_ENDPOINTS"]["word_score"] = {"NR_WORKERS": 1, "POSITIVE": ["good"], "WEIGHT": 1}
        (app / "config_gateway.txt").write_text(json.dumps(config))
        (app / "endpoints" / "word_score.py").write_text(WORD_SCORE.replace("def _predict(self, words):",
                                                                             "def _predict(self, words:"))
        broken = bis(*url, "reload", cwd=app)
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "added: word_score" in broken.stdout and "FAILED word_score:" in broken.stdout
        assert "word_score.py: syntax error at line 11" in broken.stdout
        assert gateway.run("echo", VALUE=1).status_code == 200

        (app / "endpoints" / "word_score.py").write_text(WORD_SCORE)
        fixed = bis(*url, "reload", cwd=app)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert "changed: word_score" in fixed.stdout and "started: word_score" in fixed.stdout
        gateway.wait_state("word_score", "READY")
        run = bis(*url, "run", "word_score", "TEXT=a good good day", cwd=app)
        assert run.returncode == 0 and json.loads(run.stdout) == {"score": 2}, run.stdout

        (app / "endpoints" / "word_score.py").write_text(WORD_SCORE.replace("* self.cfg_weight", "* 10"))
        one = bis(*url, "reload", "word_score", cwd=app)
        assert one.returncode == 0 and "Reloaded word_score" in one.stdout, one.stdout + one.stderr
        assert gateway.run("word_score", TEXT="good").json()["predict_result"] == {"score": 10}
    finally:
        gateway.stop()
    gateway.assert_nothing_left()
