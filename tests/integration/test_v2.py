"""The Open Inference Protocol (KServe V2) through a real gateway, spoken by the real client
(``tritonclient[http]``, Triton's own): health, metadata, infer with JSON and binary tensors,
batching, errors, versions, and /run beside it unchanged."""

from __future__ import annotations

import gzip
import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from conftest import FIXTURES, Gateway, make_app
from test_observability import sample
from tritonclient.utils import InferenceServerException

CONFIG = {
    "MAX_BODY_MB": 4,
    "CONFIG_ENDPOINTS": {
        "tensor": {"SERVER_CLASS": "tensor_model", "NR_WORKERS": 2},
        "tensor_free": {"SERVER_CLASS": "tensor_model", "NR_WORKERS": 1, "MODEL_METADATA": None},
        # The first request holds the worker for 300 ms: the ones sent meanwhile are batched.
        "tensor_batch": {"SERVER_CLASS": "tensor_model", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 8,
                         "MAX_BATCH_WAIT_MS": 50, "CALL_MS": 300},
        "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1},
        "stream": {"SERVER_CLASS": "stream_model", "NR_WORKERS": 1},
    },
}
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
IDS = np.array([1, -2, 3], dtype=np.int64)
TEXT = np.array([b"ab", "héllo".encode()], dtype=object)
EXPECTED = {"SUM": X.sum(axis=1), "DOUBLED": IDS * 2, "UPPER": np.array([b"AB", "HéLLO".encode()], dtype=object)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    files = [FIXTURES / "endpoints" / name for name in ("tensor_model.py", "echo_model.py", "stream_model.py")]
    gateway = Gateway(make_app(tmp_path_factory.mktemp("v2"), CONFIG, files)).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


@pytest.fixture(scope="module")
def client(gateway):
    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}", network_timeout=30)
    yield client
    client.close()


def tensors(binary: bool, x=X, ids=IDS, text=TEXT) -> list[triton.InferInput]:
    inputs = []
    for name, array, datatype in (("X", x, "FP32"), ("IDS", ids, "INT64"), ("TEXT", text, "BYTES")):
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def assert_expected(result, expected=EXPECTED):
    for name, want in expected.items():
        got = result.as_numpy(name)
        if want.dtype == object:  # JSON BYTES come back as str, binary as bytes
            got = np.array([g.encode() if isinstance(g, str) else g for g in got.flat], dtype=object)
        assert got.shape == want.shape and got.tolist() == want.tolist(), name


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "basic_inference_server"
    assert "binary_tensor_data" in metadata["extensions"]
    assert metadata["version"]


def test_model_ready_by_name_and_version(client):
    assert client.is_model_ready("tensor")
    assert client.is_model_ready("tensor", "1")
    assert not client.is_model_ready("tensor", "7")
    assert not client.is_model_ready("no_such_model")


def test_model_metadata_declared_and_absent(client):
    metadata = client.get_model_metadata("tensor")
    assert metadata["name"] == "tensor" and metadata["versions"] == ["1"] and metadata["platform"] == "numpy"
    assert metadata["inputs"][0] == {"name": "X", "datatype": "FP32", "shape": [-1, 4]}
    assert [o["name"] for o in metadata["outputs"]] == ["SUM", "DOUBLED", "UPPER"]
    assert client.get_model_metadata("tensor", "1") == metadata
    free = client.get_model_metadata("tensor_free")
    assert (free["inputs"], free["outputs"], free["platform"]) == ([], [], "python")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as raised:
        client.get_model_metadata("nope")
    assert raised.value.status() == "404"


def test_infer_with_json_tensors(client):
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in EXPECTED]
    result = client.infer("tensor", tensors(binary=False), outputs=outputs, request_id="req-1")
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_name"] == "tensor" and response["model_version"] == "1"
    assert {o["name"]: o["datatype"] for o in response["outputs"]} == {"SUM": "FP32", "DOUBLED": "INT64",
                                                                       "UPPER": "BYTES"}
    assert all("data" in o for o in response["outputs"])
    assert_expected(result)


def test_infer_with_the_clients_binary_defaults(client):
    result = client.infer("tensor", tensors(binary=True), parameters={"scale": 2})
    assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])
    assert_expected(result, {**EXPECTED, "SUM": X.sum(axis=1) * 2})  # the parameter reached the model


def test_requested_outputs_filter_and_mixed_binary(client):
    outputs = [triton.InferRequestedOutput("UPPER", binary_data=True), triton.InferRequestedOutput("SUM",
                                                                                                 binary_data=False)]
    result = client.infer("tensor", tensors(binary=True), outputs=outputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["UPPER", "SUM"]
    assert "data" in response["outputs"][1] and "data" not in response["outputs"][0]
    assert_expected(result, {"UPPER": EXPECTED["UPPER"], "SUM": EXPECTED["SUM"]})


def test_batch_shaped_input(client):
    x = np.random.default_rng(1).random((64, 4), dtype=np.float32)
    result = client.infer("tensor", tensors(binary=True, x=x))
    assert np.allclose(result.as_numpy("SUM"), x.sum(axis=1))
    assert result.as_numpy("SUM").shape == (64,)


def test_a_model_without_metadata_takes_any_inputs(client):
    ids = triton.InferInput("IDS", [2], "INT32")
    ids.set_data_from_numpy(np.array([4, 5], dtype=np.int32))
    result = client.infer("tensor_free", [ids])
    assert result.as_numpy("DOUBLED").tolist() == [8, 10]
    assert result.get_response()["outputs"][0]["datatype"] == "INT32"


def test_batching_endpoints_get_one_request_per_item(gateway):
    results, errors = [], []

    def call(i: int) -> None:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}", network_timeout=30)
        try:
            x = np.full((1, 4), i, dtype=np.float32)
            results.append((i, client.infer("tensor_batch", tensors(binary=True, x=x))))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(results) == 6
    for i, result in results:
        assert result.as_numpy("SUM").tolist() == [4.0 * i]
    assert max(int(result.as_numpy("BATCH")) for _, result in results) > 1


def test_an_endpoint_written_for_run_answers_v2_too(client):
    """echo_model knows nothing of V2: its dict of a tensor, a string and a number are outputs."""
    value = triton.InferInput("VALUE", [1], "BYTES")
    value.set_data_from_numpy(np.array([b"hi"], dtype=object))
    nested = triton.InferInput("NUMPY", [1], "BOOL")
    nested.set_data_from_numpy(np.array([False]))
    result = client.infer("echo", [value, nested])
    assert result.as_numpy("echo").tolist() == [b"hi"]
    assert result.as_numpy("prefix").tolist() == b"echo"
    assert int(result.as_numpy("pid")) > 0


# -- errors: 4xx with the protocol's {"error": ...}, and nothing else affected ----------------------
def raw_infer(gateway, body: bytes, header_length: int | None = None, model: str = "tensor") -> requests.Response:
    headers = {"Content-Type": "application/octet-stream" if header_length else "application/json"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return requests.post(f"{gateway.url}/v2/models/{model}/infer", data=body, headers=headers, timeout=30)


def binary_request(x: np.ndarray, size: int | None = None) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": size or x.nbytes}}]}).encode()
    return header + x.tobytes(), len(header)


def assert_v2_error(response: requests.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and words in body["error"], body


@pytest.mark.parametrize(("case", "status", "words"), [
    ("unknown model", 404, "unknown model 'nope'"),
    ("wrong datatype", 400, "datatype INT32, the model takes FP32"),
    ("unsupported datatype", 400, "unsupported datatype 'FP99'"),
    ("shape that does not match the data", 400, "shape [2, 4] needs 8 element(s), data has 7"),
    ("strings for floats", 400, "does not match datatype FP32"),
    ("missing declared input", 400, "input 'X' is missing"),
    ("malformed binary header", 400, "Inference-Header-Content-Length must be a number"),
    ("binary header past the body", 400, "Inference-Header-Content-Length is 99999"),
    ("binary header cutting the JSON", 400, "JSON"),
    ("truncated binary body", 400, "binary data truncated"),
    ("extra binary bytes", 400, "bytes after the last binary input"),
    ("unknown requested output", 400, "unknown output(s) ['NOPE']"),
    ("unknown version", 404, "has no version '3'"),
])
def test_bad_requests_get_a_clear_4xx(gateway, case, status, words):
    x = X
    json_x = {"name": "X", "datatype": "FP32", "shape": [2, 4], "data": x.reshape(-1).tolist()}
    others = [{"name": "IDS", "datatype": "INT64", "shape": [1], "data": [1]},
              {"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}]

    def request(*inputs, **extra) -> bytes:
        return json.dumps({"inputs": list(inputs), **extra}).encode()

    body, length, model = request(json_x, *others), None, "tensor"
    if case == "unknown model":
        model = "nope"
    elif case == "wrong datatype":
        body = request({**json_x, "datatype": "INT32", "data": list(range(8))}, *others)
    elif case == "unsupported datatype":
        body = request({**json_x, "datatype": "FP99"}, *others)
    elif case == "shape that does not match the data":
        body = request({**json_x, "data": list(range(7))}, *others)
    elif case == "strings for floats":
        body = request({**json_x, "data": ["a"] * 8}, *others)
    elif case == "missing declared input":
        body = request(*others)
    elif case == "malformed binary header":
        body, _ = binary_request(x)
        length = "abc"
    elif case == "binary header past the body":
        body, length = binary_request(x)[0], 99999
    elif case == "binary header cutting the JSON":
        body, length = binary_request(x)[0], 10
    elif case == "truncated binary body":
        body, length = binary_request(x)
        body = body[:-5]
    elif case == "extra binary bytes":
        body, length = binary_request(x)
        body += b"\0\0\0\0"
    elif case == "unknown requested output":
        body = request(json_x, *others, outputs=[{"name": "NOPE"}])
    elif case == "unknown version":
        response = requests.post(f"{gateway.url}/v2/models/tensor/versions/3/infer", data=body, timeout=30)
        assert_v2_error(response, status, words)
        return
    if case in ("truncated binary body", "extra binary bytes", "binary header past the body",
                "binary header cutting the JSON", "malformed binary header"):
        model = "tensor_free"  # no declared inputs: the binary part alone is at fault
    headers = {"Inference-Header-Content-Length": str(length)} if length is not None else {}
    response = requests.post(f"{gateway.url}/v2/models/{model}/infer", data=body, headers=headers, timeout=30)
    assert_v2_error(response, status, words)


def test_nothing_else_is_affected_by_bad_requests(gateway, client):
    pids = {name: info["PID"] for name, info in gateway.servers().items()}
    body, length = binary_request(X)
    for cut in (1, 7, 31, len(body) - length - 1):
        assert raw_infer(gateway, body[:-cut], length, "tensor_free").status_code == 400
    assert raw_infer(gateway, b"\xff\x00garbage", None).status_code == 400
    assert raw_infer(gateway, b"{}", 1).status_code == 400
    assert_expected(client.infer("tensor", tensors(binary=True)))
    assert gateway.run("echo", VALUE="still here").json()["predict_result"]["echo"] == "still here"
    assert {name: info["PID"] for name, info in gateway.servers().items()} == pids  # nothing restarted


def test_a_compressed_body_is_refused_clearly(gateway):
    body = json.dumps({"inputs": [{"name": "IDS", "datatype": "INT64", "shape": [1], "data": [1]}]}).encode()
    response = requests.post(f"{gateway.url}/v2/models/tensor_free/infer", data=gzip.compress(body),
                             headers={"Content-Encoding": "gzip"}, timeout=10)
    assert_v2_error(response, 415, "Content-Encoding gzip is not supported")


def test_binary_answers_are_json_then_raw_tensors(gateway):
    body, length = binary_request(X)
    body = body.replace(b'"inputs"', b'"parameters": {"binary_data_output": true}, "inputs"', 1)
    length += len(b'"parameters": {"binary_data_output": true}, ')
    response = raw_infer(gateway, body, length, "tensor_free")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/octet-stream"
    header_length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:header_length])
    (output,) = header["outputs"]
    assert output["name"] == "SUM" and output["parameters"]["binary_data_size"] == 8
    assert struct.unpack("<2f", response.content[header_length:]) == tuple(X.sum(axis=1))
    assert response.headers["X-Request-ID"]


def test_v2_routes_answer_wrong_methods_and_paths_in_the_protocols_shape(gateway):
    assert_v2_error(requests.get(f"{gateway.url}/v2/models/tensor/infer", timeout=10), 405, "")
    assert "POST" in requests.get(f"{gateway.url}/v2/models/tensor/infer", timeout=10).headers["Allow"]
    post_metadata = requests.post(f"{gateway.url}/v2/models/tensor", data=b"{}", timeout=10)
    assert_v2_error(post_metadata, 405, "takes GET")
    assert post_metadata.headers["Allow"] == "GET"
    assert_v2_error(requests.get(f"{gateway.url}/v2/nothing/here", timeout=10), 404, "")


def test_v2_requests_are_counted_like_run(gateway, client):
    before = sample(gateway.get("/metrics").text, "bis_requests_total", signature="tensor", code="200") or 0
    for _ in range(3):
        client.infer("tensor", tensors(binary=True))
    raw_infer(gateway, b"{}", None)
    text = gateway.get("/metrics").text
    assert sample(text, "bis_requests_total", signature="tensor", code="200") == before + 3
    assert (sample(text, "bis_requests_total", signature="tensor", code="400") or 0) >= 1


def test_a_reload_is_a_new_version(gateway, client):
    response = gateway.admin("/reload_server", {"SIGNATURE": "tensor"})
    assert response.status_code == 200, response.text
    assert client.get_model_metadata("tensor")["versions"] == ["2"]
    assert client.is_model_ready("tensor", "2") and not client.is_model_ready("tensor", "1")
    result = client.infer("tensor", tensors(binary=True), model_version="2")
    assert result.get_response()["model_version"] == "2"
    with pytest.raises(InferenceServerException, match="no version '1'"):
        client.infer("tensor", tensors(binary=True), model_version="1")


def test_a_streaming_endpoint_over_v2_says_to_call_run(gateway):
    body = {"inputs": [{"name": "N", "datatype": "INT64", "shape": [], "data": [3]}]}
    answer = requests.post(f"{gateway.url}/v2/models/stream/infer", json=body, timeout=10)
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error.startswith("this endpoint streams (its _predict returns a generator)") and "POST /run" in error
    assert "_post_process" not in error
    assert gateway.run("stream", N=2).json()["predict_result"][1]["i"] == 1  # /run streams it as ever


def test_no_request_left_an_error_in_the_logs(gateway):
    """Every V2 answer above was delivered cleanly: no traceback in the gateway's or the servers'
    logs (a V2 answer once went on to the stream code after it was sent, and logged a failure)."""
    output = gateway.output()
    assert "Traceback" not in output and "delivering the answer failed" not in output, output[-3000:]


def test_the_gateway_never_loads_numpy(gateway, client):
    """The gateway relays tensors without decoding them: after V2 infer requests, JSON and binary,
    no numpy module is mapped into its process (its model servers do load it)."""
    for binary in (False, True):
        assert client.infer("tensor", tensors(binary)).as_numpy("SUM") is not None
    maps = Path(f"/proc/{gateway.proc.pid}/maps").read_text()
    assert "numpy" not in maps
    server_maps = Path(f"/proc/{gateway.servers()['tensor']['PID']}/maps").read_text()
    assert "numpy" in server_maps  # (the check can see it where it is)


def test_system_shared_memory_is_off_unless_allowed(gateway, client):
    assert "system_shared_memory" not in client.get_server_metadata()["extensions"]
    refused = gateway.post("/v2/systemsharedmemory/region/r/register", {"key": "/r", "offset": 0, "byte_size": 4})
    assert refused.status_code == 403 and "ALLOW_CLIENT_SHM" in refused.json()["error"]
    assert gateway.get("/v2/systemsharedmemory/status").status_code == 403
    named = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1],
                         "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]}
    answer = gateway.post("/v2/models/tensor/infer", named)
    assert answer.status_code == 400 and "ALLOW_CLIENT_SHM" in answer.json()["error"]
