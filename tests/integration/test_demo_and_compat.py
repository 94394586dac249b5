"""The shipped demo and the original README's files, run as a user would run them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import tritonclient.http as triton
from conftest import FIXTURES, REPO


def _copy_app(tmp_path: Path, source: Path, endpoint_names: list[str]) -> Path:
    app = tmp_path / "app"
    (app / "endpoints").mkdir(parents=True)
    for name in endpoint_names:
        shutil.copy(source / "endpoints" / name, app / "endpoints" / name)
    shutil.copy(source / "config_gateway.txt", app / "config_gateway.txt")
    return app


def test_shipped_demo_answers_the_documented_prediction(tmp_path, gateway_factory):
    app = _copy_app(tmp_path, REPO, ["dummy_model_demo1.py", "dummy_model_demo2.py", "support_process.py"])
    gateway = gateway_factory({}, app_dir=app)

    reply = gateway.run("dummy_model_demo2", INPUT_VALUE=3)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["predict_result"] == {"dummy_model_predict": "3*0 + 0 = 0 PREDICTED"}
    for key in ("call_id", "signature", "worker_id", "time", "ver", "ver-lib", "ver-app", "gw-uptime", "hostname"):
        assert key in body, key
    assert body["signature"].split(".")[1:3] == ["dummy_model_demo2", "DummyModelDemo2Worker"]

    word = gateway.run("dummy_model_demo1", INPUT_VALUE="house", LANGUAGE="en").json()["predict_result"]
    assert word["dummy_model_a_predict"] == "same-word-always"
    assert word["inputs"] == {"INPUT_VALUE": "house", "LANGUAGE": "en"}

    servers = gateway.servers()
    assert set(servers) == {"dummy_model_demo1", "dummy_model_demo2"}  # not the -bis, not the support entry
    assert all(s["STATE"] == "READY" and s["WORKERS"]["ready"] == 2 for s in servers.values())
    support = gateway.post("/list_servers").json()["SUPPORT_PROCESSES"]
    assert set(support) == {"support_process"} and support["support_process"]["PID"]


def test_the_readmes_v2_examples_run_against_the_demo(tmp_path, gateway_factory):
    """The README's tritonclient and curl calls, against the shipped demo (written for /run only)."""
    app = _copy_app(tmp_path, REPO, ["dummy_model_demo1.py", "dummy_model_demo2.py", "support_process.py"])
    gateway = gateway_factory({}, app_dir=app)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}")
    try:
        assert client.is_server_ready() and client.is_model_ready("dummy_model_demo2")
        value = triton.InferInput("INPUT_VALUE", [], "INT64")
        value.set_data_from_numpy(np.array(3, dtype=np.int64))
        result = client.infer("dummy_model_demo2", [value])
    finally:
        client.close()
    assert result.as_numpy("dummy_model_predict").tolist() == b"3*0 + 0 = 0 PREDICTED"
    body = {"inputs": [{"name": "INPUT_VALUE", "datatype": "INT64", "shape": [], "data": [3]}]}
    answer = gateway.post("/v2/models/dummy_model_demo2/infer", body).json()
    assert answer["outputs"] == [{"name": "dummy_model_predict", "datatype": "BYTES", "shape": [],
                                  "data": ["3*0 + 0 = 0 PREDICTED"]}]


def test_original_readme_files_run_unchanged(tmp_path, gateway_factory):
    source = FIXTURES / "original_readme"
    app = _copy_app(tmp_path, source, ["dummy_model_demo1.py", "dummy_model_demo2.py", "support_process.py"])
    gateway = gateway_factory({}, app_dir=app)

    demo2 = gateway.run("dummy_model_demo2", INPUT_VALUE=3)
    assert demo2.status_code == 200, demo2.text
    assert demo2.json()["predict_result"] == {"dummy_model_predict": "3*0 + 0 = 0 PREDICTED"}

    demo1 = gateway.run("dummy_model_demo1", INPUT_VALUE="casa", LANGUAGE="ro").json()
    assert demo1["predict_result"]["dummy_model_a_predict"] == "same-word-always"
    assert demo1["predict_result"]["worker_ver"] == "1.2.1"

    missing = gateway.run("dummy_model_demo2")
    assert missing.status_code == 400
    assert missing.json()["ERROR"] == "INPUT_VALUE should be defined in inputs"

    notes = gateway.post("/notifications", {"SIGNATURE": "dummy_model_demo2"}).json()
    messages = [n["NOTIF"] for key, items in notes.items() if isinstance(items, list) for n in items]
    assert any("Predicting on usr_input: 3" in m for m in messages), notes

    names = set(gateway.servers())
    assert "dummy_model_demo1" in names and "dummy_model_demo2" in names
    status = gateway.run("SYSTEM_STATUS").json()["SYSTEM_STATUS"]
    for key in ("info", "mem_avail", "mem_gateway", "mem_servers", "mem_sys", "mem_total", "mem_used"):
        assert key in status, key
    assert set(status["mem_servers"]) == names | {"support_process"}
    assert all(value > 0 for value in status["mem_servers"].values())
    assert json.loads(json.dumps(status))  # plain JSON


ORIGINAL_STYLE_SCRIPT = '''
import sys
import os
import platform
import argparse

from basic_inference_server import Logger
from basic_inference_server import FlaskGateway, get_packages
from app_ver import __VER__ as APP_VER
from basic_inference_server import LIB_VER

if __name__ == '__main__':
  parser = argparse.ArgumentParser()
  parser.add_argument('-b', '--base_folder', type=str, default='.')
  parser.add_argument('-a', '--app_folder', type=str, default='_cache')
  parser.add_argument('--host', type=str, default='0.0.0.0')
  parser.add_argument('--port', type=int, default=5002)
  args = parser.parse_args()

  log = Logger(
    lib_name='AIAPP',
    config_file='config_gateway.txt',
    base_folder=args.base_folder, app_folder=args.app_folder,
    TF_KERAS=False
  )
  packs = get_packages()
  log.P("Running v{} lib {} py {} with {} packages".format(APP_VER, LIB_VER, sys.version.split(' ')[0], len(packs)))

  gtw = FlaskGateway(
    log=log,
    workers_location='endpoints',
    workers_suffix='Worker',
    host=args.host,
    port=args.port,
    server_execution_path='/run'
  )
'''


def test_gateway_built_like_the_original_run_gateway_script(tmp_path, gateway_factory):
    """A user script in the original README's style: Logger(config_file=...) then FlaskGateway(log=...)."""
    import os
    import signal
    import subprocess
    import sys

    source = FIXTURES / "original_readme"
    app = _copy_app(tmp_path, source, ["dummy_model_demo1.py", "dummy_model_demo2.py", "support_process.py"])
    (app / "app_ver.py").write_text("__VER__ = '4.5.6'\n")
    (app / "run_gateway.py").write_text(ORIGINAL_STYLE_SCRIPT)
    gateway = gateway_factory({}, app_dir=app, start=False)
    # The script has no port flags for the model servers: the _data override file moves them.
    data = app / "_cache" / "_data"
    data.mkdir(parents=True)
    (data / "ports_config.json").write_text(json.dumps({"FIRST_SERVER_PORT": gateway.first_server_port}))
    out = open(gateway.log_path, "wb")
    gateway.proc = subprocess.Popen([sys.executable, "run_gateway.py", "--host", "127.0.0.1", "--port",
                                     str(gateway.port)], cwd=app, env=gateway.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    gateway._out = out
    gateway.known_pids.add(gateway.proc.pid)
    gateway.wait_for("/ready", 200, timeout=30)
    gateway.remember_children()
    body = gateway.run("dummy_model_demo2", INPUT_VALUE=3).json()
    assert body["predict_result"] == {"dummy_model_predict": "3*0 + 0 = 0 PREDICTED"}
    assert body["ver-app"] == "4.5.6"
    ports = {info["PORT"] for info in gateway.servers().values()}
    assert ports == {gateway.first_server_port, gateway.first_server_port + 1}
    os.kill(gateway.proc.pid, signal.SIGTERM)
    assert gateway.proc.wait(15) == 0
