"""Pipelines through a real gateway and real model servers: the list form and the graph form,
arrays passed as arrays (never JSON) between steps, a streaming last step, a failing step, the
pipeline's REQUEST_TIMEOUT, a client that leaves, the steps still callable alone, metrics, and
configuration mistakes that stop the start naming the key."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import requests
from conftest import ECHO_CONFIG, FIXTURES, REPO, Gateway, make_app, module_gateway
from test_lifecycle import run_cli

pytestmark = pytest.mark.integration


def step(op: str, workers: int = 1) -> dict:
    return {"SERVER_CLASS": "pipe_step", "OP": op, "NR_WORKERS": workers, "REQUEST_TIMEOUT": 20}


CONFIG = {**ECHO_CONFIG, "MAX_BODY_MB": 1, "ALLOW_CLIENT_SHM": True, "CONFIG_ENDPOINTS": {
    "decode": step("decode", 2), "half": step("half", 2), "flip": step("flip"), "merge": step("merge"),
    "stats": step("stats", 2), "items": step("items"), "scale": step("scale"), "v2out": step("v2out"),
    "image_flow": {"PIPELINE": ["decode", "half", "stats"], "DESCRIPTION": "decode, resize, summarise"},
    "graph_flow": {"PIPELINE": {"decode": [], "half": ["decode"], "flip": ["decode"], "merge": ["half", "flip"],
                                "stats": ["merge"]}},
    "streamed_flow": {"PIPELINE": ["decode", "items"]},
    "quick_flow": {"PIPELINE": ["decode", "half", "stats"], "REQUEST_TIMEOUT": 1},
    "v2_flow": {"PIPELINE": ["scale", "v2out"]},
}}
FRAME = {"W": 1920, "H": 1080, "SEED": 7}  # a 1080p frame: 6 MB between decode and half


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    yield from module_gateway(tmp_path_factory, "pipelines", CONFIG)


def test_a_list_pipeline_passes_each_steps_value_to_the_next_as_arrays(gateway):
    answer = gateway.run("image_flow", **FRAME)
    assert answer.status_code == 200, answer.text
    result = answer.json()["predict_result"]
    # 6 MB of uint8 went from decode to half, half's float32 (12 MB at half size) to stats: as arrays.
    assert result["shape"] == [540, 960, 3] and result["dtype"] == "float32"
    assert result["numpy"] and result["read_only"]
    assert 0.45 < result["mean"] < 0.55
    assert len(set(result["pids"])) == 3  # three model servers, one per step
    assert {"call_id", "worker_id"} <= answer.json().keys()  # the usual envelope, from the last step
    assert gateway.run("decode", W=4, H=2).status_code == 200  # each step is still an endpoint of its own


def test_a_graph_pipeline_runs_branches_side_by_side_and_merges_them(gateway):
    started = time.monotonic()
    answer = gateway.run("graph_flow", W=64, H=32, SLEEP_AT={"half": 0.6, "flip": 0.6})
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    result = answer.json()["predict_result"]
    assert result["shapes"] == {"flip": [32, 64, 3], "half": [16, 32, 3]}  # {parent: its value}
    assert elapsed < 1.1  # half and flip ran at the same time (0.6 s each)


def test_the_last_step_may_stream(gateway):
    with gateway.session.post(gateway.url + "/run", json={"SIGNATURE": "streamed_flow", "W": 8, "H": 8},
                              headers={"Accept": "text/event-stream"}, stream=True, timeout=10) as answer:
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in answer.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert len(events) == 5  # four rows, then the end
    assert "row_mean" in events[0]


def test_a_failing_step_answers_its_error_naming_the_step_and_the_rest_does_not_run(gateway, tmp_path):
    mark = tmp_path / "stats-ran"
    answer = gateway.run("image_flow", W=8, H=8, FAIL_AT="half", MARK_AT={"stats": str(mark)})
    assert answer.status_code == 500, answer.text
    error = answer.json()
    assert error["PIPELINE"] == "image_flow" and error["STEP"] == "half" and error["STEP_STATUS"] == 500
    assert "step half failed on request" in error["ERROR"]
    assert not mark.exists()
    bad = gateway.run("image_flow", W="wide", H=8)  # the first step cannot read the body
    assert bad.status_code >= 400 and bad.json()["STEP"] == "decode"
    last = gateway.run("image_flow", W=8, H=8, FAIL_AT="stats")  # the last step's error names it too
    assert last.status_code == 500 and last.json()["STEP"] == "stats" and last.json()["STEP_STATUS"] == 500
    assert gateway.run("image_flow", W=8, H=8).status_code == 200  # nothing else broke


def test_the_pipelines_request_timeout_bounds_the_whole_flow(gateway):
    started = time.monotonic()
    answer = gateway.run("quick_flow", W=8, H=8, SLEEP_AT={"decode": 0.6, "half": 0.6})
    assert answer.status_code == 504, answer.text
    assert answer.json()["STEP"] == "half" and "REQUEST_TIMEOUT" in answer.json()["ERROR"]
    assert time.monotonic() - started < 1.5  # 1 s for the whole flow, though each step took less


def test_a_client_that_leaves_cancels_the_steps_still_to_run(gateway, tmp_path):
    marks = {op: tmp_path / op for op in ("decode", "half", "stats")}
    body = json.dumps({"SIGNATURE": "image_flow", "W": 8, "H": 8, "SLEEP_AT": {"decode": 0.8},
                       "MARK_AT": {op: str(path) for op, path in marks.items()}}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 5
        while not marks["decode"].exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    time.sleep(1.5)  # decode ends (its answer goes nowhere); half must never start
    assert marks["decode"].read_text() == "ended"
    assert not marks["half"].exists() and not marks["stats"].exists()
    assert gateway.run("image_flow", W=8, H=8).status_code == 200


def test_metrics_per_step_and_the_request_id_across_the_steps_logs(gateway):
    answer = gateway.session.post(gateway.url + "/run", json={"SIGNATURE": "image_flow", "W": 8, "H": 8},
                                  headers={"X-Request-ID": "pipe-trace-42"}, timeout=10)
    assert answer.status_code == 200
    metrics = gateway.get("/metrics").text
    for name in ("decode", "half", "stats"):
        assert f'bis_pipeline_step_seconds_count{{pipeline="image_flow",step="{name}"}}' in metrics
    deadline = time.monotonic() + 5
    while True:  # each step's server logged its line under the request's id
        lines = [line for line in gateway.output().splitlines() if "[pipe-trace-42]" in line and "runs" in line]
        if len(lines) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(line.split("step ")[-1] for line in lines) == ["decode runs", "half runs", "stats runs"], lines


@pytest.mark.parametrize(("entry", "words"), [
    ({"PIPELINE": ["decode", "nope"]}, "CONFIG_ENDPOINTS.bad.PIPELINE: step 'nope' is no endpoint"),
    ({"PIPELINE": {"decode": ["half"], "half": ["decode"]}}, "a cycle"),
    ({"PIPELINE": ["decode", "off"]}, "step 'off' is disabled"),
    ({"PIPELINE": ["decode", "image_flow"]}, "step 'image_flow' is a pipeline itself"),
    ({"PIPELINE": ["decode"], "NR_WORKERS": 2}, "CONFIG_ENDPOINTS.bad.NR_WORKERS: a pipeline entry takes only"),
])
def test_configuration_mistakes_stop_the_start_naming_the_key(tmp_path, entry, words):
    endpoints = {"decode": step("decode"), "half": step("half"), "off": {**step("half"), "DISABLED": True},
                 "image_flow": {"PIPELINE": ["decode", "half"]}, "bad": entry}
    gateway = Gateway(make_app(tmp_path, {**ECHO_CONFIG, "CONFIG_ENDPOINTS": endpoints}))
    done = run_cli(gateway)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    gateway.assert_nothing_left(timeout=2)


def test_unknown_and_bad_requests_to_a_pipeline_are_clear_errors(gateway):
    assert requests.post(gateway.url + "/run", data=b"{nope", timeout=5).status_code == 400
    answer = gateway.run("image_flow")  # decode needs W and H
    assert answer.status_code >= 400 and answer.json()["STEP"] == "decode"


def test_the_image_pipeline_example_classifies_a_1080p_frame(tmp_path):
    """examples/image_pipeline as the docs run it: a 1080p frame decoded, resized and normalised,
    classified; the arrays go between the steps as arrays."""
    import shutil

    app = tmp_path / "image_pipeline"
    shutil.copytree(REPO / "examples" / "image_pipeline", app, ignore=shutil.ignore_patterns("_cache", "__pycache__"))
    gateway = Gateway(app).start()
    try:
        answer = gateway.run("classify_frame", WIDTH=1920, HEIGHT=1080, SEED=3)
        assert answer.status_code == 200, answer.text
        result = answer.json()["predict_result"]
        assert len(result["top_k"]) == 3 and abs(sum(result["scores"].values()) - 1) < 1e-4
        assert gateway.run("classify_frame", WIDTH=1920, HEIGHT=1080, SEED=3).json()["predict_result"] == result
        import base64

        grey = base64.b64encode(bytes([128]) * (64 * 48 * 3)).decode()
        small = gateway.run("classify_frame", WIDTH=64, HEIGHT=48, FRAME_B64=grey)
        assert small.status_code == 200 and small.json()["predict_result"]["top_k"][0]["class"]
        wrong = gateway.run("classify_frame", WIDTH=64, HEIGHT=48, FRAME_B64="AAAA")
        assert wrong.status_code == 400 and wrong.json()["STEP"] == "frame_decoder"
    finally:
        gateway.stop()
        gateway.assert_nothing_left()


# -- shared memory between the steps --------------------------------------------------------------

def shared_memory(gateway: Gateway) -> dict[str, int]:
    """The pipeline memfds the gateway's processes hold open or have mapped, by process name."""
    import os

    import psutil

    found: dict[str, int] = {}
    root = psutil.Process(gateway.proc.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            fds = sum(os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("/memfd:bis-pipeline")
                      for fd in os.listdir(f"/proc/{proc.pid}/fd"))
            with open(f"/proc/{proc.pid}/maps") as maps:
                mapped = maps.read().count("/memfd:bis-pipeline")
        except (OSError, psutil.Error):
            continue  # gone meanwhile
        if fds + mapped:
            found[" ".join(proc.cmdline()[-1:])] = fds + mapped
    return found


def wait_no_shared_memory(gateway: Gateway, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (held := shared_memory(gateway)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held == {}, held


def test_large_arrays_go_through_shared_memory_and_none_is_left_after(gateway):
    import os
    import threading

    before = set(os.listdir("/dev/shm"))
    answers = []
    thread = threading.Thread(target=lambda: answers.append(gateway.run("image_flow", **FRAME, SLEEP_AT={"half": 0.8})))
    thread.start()
    deadline = time.monotonic() + 5
    while not (held := shared_memory(gateway)) and time.monotonic() < deadline:
        time.sleep(0.02)
    thread.join(15)
    assert held, "the 6 MB frame did not go through a memfd"
    assert answers[0].status_code == 200 and answers[0].json()["predict_result"]["shape"] == [540, 960, 3]
    wait_no_shared_memory(gateway)
    assert set(os.listdir("/dev/shm")) == before  # memfds never appear there


@pytest.mark.parametrize("victim", ["half", "decode"])
def test_a_sigkilled_step_leaves_no_shared_memory(gateway, victim, tmp_path):
    """SIGKILL of the step that maps the frame (half, while it sleeps on it: the request fails
    naming it) or of the step that made it (decode, once it answered: half has it mapped already
    and the request succeeds); either way nothing is held once the request ended."""
    import os
    import signal
    import threading

    pid = gateway.servers()[victim]["PID"]
    mark = tmp_path / "half"
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        gateway.run("image_flow", **FRAME, SLEEP_AT={"half": 1}, MARK_AT={"half": str(mark)})))
    thread.start()
    deadline = time.monotonic() + 5
    while not mark.exists():  # half has the frame mapped, and sleeps on it
        assert time.monotonic() < deadline, f"half never ran: {answers and answers[0].text}"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    thread.join(20)
    if victim == "half":
        assert answers[0].status_code == 502 and answers[0].json()["STEP"] == "half", answers[0].text
    else:
        assert answers[0].status_code == 200, answers[0].text
    wait_no_shared_memory(gateway)
    deadline = time.monotonic() + 30
    while not ((info := gateway.servers()[victim])["PID"] not in (None, pid) and info["STATE"] == "READY"):
        assert time.monotonic() < deadline, f"{victim} was not restarted: {info}"
        time.sleep(0.05)
    again = gateway.run("image_flow", **FRAME)
    assert again.status_code == 200, again.text
    wait_no_shared_memory(gateway)


def test_list_servers_and_the_dashboard_show_the_pipelines(gateway):
    listed = gateway.post("/list_servers").json()
    image = listed["PIPELINES"]["image_flow"]
    assert image["STATE"] == "READY" and image["STEPS"] == ["decode", "half", "stats"] and image["LAST"] == "stats"
    assert image["DESCRIPTION"] == "decode, resize, summarise"
    assert listed["PIPELINES"]["graph_flow"]["PARENTS"]["merge"] == ["half", "flip"]
    assert "image_flow" not in listed["AVAIL_SERVERS"]  # no process of its own
    assert gateway.get("/dashboard/data").json()["PIPELINES"]["graph_flow"]["STATE"] == "READY"
    page = gateway.get("/dashboard").text
    assert 'data-testid="pipelines-table"' in page and "renderPipelines" in page


def test_the_v2_infer_route_runs_a_pipeline_for_tritonclient(gateway):
    """POST /v2/models/<pipeline>/infer: the first step reads the V2 request (binary tensors), the
    value goes on as an array, the last step answers as the protocol says (the outputs asked)."""
    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}")
    try:
        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        given = triton.InferInput("X", [2, 3], "FP32")
        given.set_data_from_numpy(data, binary_data=True)
        result = client.infer("v2_flow", [given], outputs=[triton.InferRequestedOutput("MEAN", binary_data=True),
                                                           triton.InferRequestedOutput("SHAPE", binary_data=False)])
        assert np.allclose(result.as_numpy("MEAN"), [data.mean() * 2])
        assert result.as_numpy("SHAPE").tolist() == [2, 3]
        assert result.get_response()["model_name"] == "v2_flow"
        with pytest.raises(triton.InferenceServerException, match="step 'scale'"):
            wrong = triton.InferInput("Y", [1], "FP32")
            wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32))
            client.infer("v2_flow", [wrong])
    finally:
        client.close()
    assert gateway.post("/v2/models/v2_flow/versions/7/infer", {"inputs": []}).status_code == 404
    assert gateway.get("/v2/models/v2_flow/ready").json() == {"name": "v2_flow", "ready": True}
    metadata = gateway.get("/v2/models/v2_flow").json()
    assert metadata["versions"] == ["1"] and metadata["platform"] == "pipeline"
    assert gateway.get("/v2/models/v2_flow/versions/2").status_code == 404


def test_v2_system_shared_memory_with_tritonclient_unchanged(gateway):
    """Triton's system shared-memory extension, as tritonclient.utils.shared_memory uses it: a 6 MB
    input read from the client's region by the pipeline's first step, an output written into
    another region by its last step; the body carries no tensor."""
    import numpy as np
    import tritonclient.http as triton
    import tritonclient.utils.shared_memory as shm

    data = np.random.default_rng(5).random((1080, 1920 // 4, 3), dtype=np.float32)  # 6 MB of FP32
    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}")
    tag = f"bis{os.getpid()}"
    given = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", data.nbytes)
    answer = shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", 64)
    try:
        shm.set_shared_memory_region(given, [data])
        assert "system_shared_memory" in client.get_server_metadata()["extensions"]
        client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", data.nbytes)
        client.register_system_shared_memory(f"{tag}_out", f"/{tag}_out", 64)
        status = {region["name"]: region for region in client.get_system_shared_memory_status()}
        assert status[f"{tag}_in"]["byte_size"] == data.nbytes
        tensor = triton.InferInput("X", list(data.shape), "FP32")
        tensor.set_shared_memory(f"{tag}_in", data.nbytes)
        mean = triton.InferRequestedOutput("MEAN", binary_data=True)
        mean.set_shared_memory(f"{tag}_out", 64)
        result = client.infer("v2_flow", [tensor], outputs=[mean, triton.InferRequestedOutput("SHAPE")])
        output = result.get_output("MEAN")
        assert output["parameters"]["shared_memory_region"] == f"{tag}_out"
        written = shm.get_contents_as_numpy(answer, np.float32, [1])
        assert np.allclose(written, [data.mean() * 2], rtol=1e-4)
        assert result.as_numpy("SHAPE").tolist() == list(data.shape)
        # Bounds and names are checked: a region past its segment, a key outside /dev/shm.
        with pytest.raises(triton.InferenceServerException, match="past the end"):
            client.register_system_shared_memory("too_big", f"/{tag}_out", 1 << 20)
        with pytest.raises(triton.InferenceServerException, match="key"):
            client.register_system_shared_memory("sneaky", "/../etc/passwd", 1)
        small = triton.InferInput("X", [4], "FP32")
        small.set_shared_memory(f"{tag}_out", 16, offset=60)  # past the 64 bytes registered
        with pytest.raises(triton.InferenceServerException, match="past its byte_size"):
            client.infer("v2_flow", [small])
        client.unregister_system_shared_memory(f"{tag}_in")
        assert [r["name"] for r in client.get_system_shared_memory_status()] == [f"{tag}_out"]
    finally:
        client.unregister_system_shared_memory()
        client.close()
        shm.destroy_shared_memory_region(given)
        shm.destroy_shared_memory_region(answer)
    assert gateway.get("/v2/systemsharedmemory/status").json() == []


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"not json", 400, "expected"),
    (b'{"key": "/nope_segment_xyz", "byte_size": 4}', 400, "no shared-memory segment"),
    (b'{"key": "/x", "byte_size": -1}', 400, "byte_size"),
    (b'{"key": 7, "byte_size": 4}', 400, "key"),
    (b'{"key": "/dev/shm/../../etc/passwd", "byte_size": 4}', 400, "key"),
])
def test_bad_shared_memory_registrations_are_clear_errors(gateway, body, status, words):
    answer = gateway.session.post(gateway.url + "/v2/systemsharedmemory/region/bad/register", data=body,
                                  headers={"Content-Type": "application/json"}, timeout=5)
    assert answer.status_code == status and words in answer.json()["error"], answer.text
    assert gateway.get("/v2/systemsharedmemory/region/nope/status").status_code == 404
    assert gateway.session.post(gateway.url + "/v2/systemsharedmemory/region/a%2Fb/register", json={},
                                timeout=5).status_code in (400, 404)
    assert gateway.run("image_flow", W=8, H=8).status_code == 200  # nothing else broke


def test_a_last_step_that_cannot_take_the_request_fails_the_pipeline_clearly(gateway_factory):
    """The last step's server is down (SIGKILLed, restarting) when the steps before have answered:
    the pipeline answers its 503 naming the step, at once, and runs again once it is back."""
    import signal

    endpoints = {"decode": step("decode"), "stats": step("stats"), "flow": {"PIPELINE": ["decode", "stats"]}}
    gateway = gateway_factory({**ECHO_CONFIG, "CONFIG_ENDPOINTS": endpoints})
    os.kill(gateway.servers()["stats"]["PID"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while gateway.servers()["stats"]["STATE"] == "READY":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    answer = gateway.run("flow", W=8, H=8)
    assert answer.status_code == 503 and answer.json()["STEP"] == "stats", answer.text
    gateway.wait_state("stats", "READY", timeout=30)
    assert gateway.run("flow", W=8, H=8).status_code == 200


def test_a_remote_step_takes_and_gives_its_values_over_http_with_the_token(gateway_factory, tmp_path):
    """A step served elsewhere (URLS, the endpoint command with BIS_ENDPOINT_TOKEN): the 1080p frame
    goes to it inline over HTTP (no shared memory between hosts), its value comes back to the next
    local step; a server without a token refuses pipeline steps (their values are pickles)."""
    from test_endpoint_command import EndpointProcess

    secret = "pipeline-secret-5e1f"
    files = [FIXTURES / "endpoints" / "pipe_step.py"]
    remote_app = make_app(tmp_path / "remote", {"CONFIG_ENDPOINTS": {"half": step("half", 2)}}, files)
    remote = EndpointProcess(remote_app, env={"BIS_ENDPOINT_TOKEN": secret}).start(extra_args=["half"])
    open_app = make_app(tmp_path / "open", {"CONFIG_ENDPOINTS": {"half": step("half")}}, files)
    tokenless = EndpointProcess(open_app).start(extra_args=["half"])
    try:
        endpoints = {"decode": step("decode"), "stats": step("stats"),
                     "half": {**step("half"), "URLS": [f"http://127.0.0.1:{remote.port}"]},
                     "flow": {"PIPELINE": ["decode", "half", "stats"]}, "tail": {"PIPELINE": ["decode", "half"]}}
        gateway = gateway_factory({**ECHO_CONFIG, "CONFIG_ENDPOINTS": endpoints}, files,
                                  env={"BIS_ENDPOINT_TOKEN": secret})
        deadline = time.monotonic() + 20
        while gateway.get("/list_servers").json()["AVAIL_SERVERS"].get(f"half@127.0.0.1:{remote.port}", {}).get(
                "STATE") != "READY":
            assert time.monotonic() < deadline, gateway.get("/list_servers").json()
            time.sleep(0.1)
        assert gateway.get("/list_servers").json()["PIPELINES"]["flow"]["STATE"] == "READY"  # its remote step too
        answer = gateway.run("flow", **FRAME)
        assert answer.status_code == 200, answer.text
        result = answer.json()["predict_result"]
        assert result["shape"] == [540, 960, 3] and result["dtype"] == "float32" and result["read_only"]
        assert remote.proc.pid in result["pids"]  # (the endpoint command serves in its own process)
        v2 = gateway.post("/v2/models/tail/infer", json={"inputs": []}, timeout=5)  # its last step is remote
        assert v2.status_code == 501 and "'half'" in v2.json()["error"]
        assert gateway.run("flow", W=8, H=8).status_code == 200  # nothing was left counted in flight
        refused = requests.post(f"http://127.0.0.1:{tokenless.port}/run", data=b"x", timeout=5,
                                headers={"X-Pipeline-Step": "3", "Content-Type": "application/x-bis-pipeline"})
        assert refused.status_code == 403 and "BIS_ENDPOINT_TOKEN" in refused.json()["ERROR"]
    finally:
        for server in (remote, tokenless):
            server.stop()
            server.assert_nothing_left()
