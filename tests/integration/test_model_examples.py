"""The real-model examples (examples/sklearn_iris, examples/onnx_classifier) through a real
gateway: the model file made on first start and reused, /run and V2 answers, batching, and a
missing or corrupt model file reported as a FAILED endpoint naming the file."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import tritonclient.http as triton
from conftest import REPO, Gateway

EXAMPLES = {"sklearn_iris": ("iris_classifier", "iris_classifier.joblib"),
            "onnx_classifier": ("onnx_classifier", "iris_classifier.onnx")}
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
CLASSES = ["setosa", "virginica", "versicolor"]


def example_app(tmp_path, example: str, **changes) -> tuple:
    app = tmp_path / example
    shutil.copytree(REPO / "examples" / example, app, ignore=shutil.ignore_patterns("_cache", "__pycache__"))
    config = json.loads((app / "config_gateway.txt").read_text())
    endpoint, model_file = EXAMPLES[example]
    config["CONFIG_ENDPOINTS"][endpoint].update(changes)
    (app / "config_gateway.txt").write_text(json.dumps(config))
    return app, endpoint, app / "_cache" / "_models" / model_file


@pytest.fixture
def started(tmp_path):
    gateways: list[Gateway] = []

    def start(app, wait_ready: bool = True) -> Gateway:
        gateway = Gateway(app)
        gateways.append(gateway)
        return gateway.start(wait_ready=wait_ready)

    yield start
    for gateway in gateways:
        gateway.stop()
        gateway.assert_nothing_left()


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_the_example_serves_its_model_and_reuses_the_file(tmp_path, started, example):
    app, endpoint, model_file = example_app(tmp_path, example)
    gateway = started(app)
    assert model_file.is_file()  # made on the first start
    made = model_file.stat().st_mtime_ns
    answer = gateway.run(endpoint, FEATURES=FLOWERS).json()["predict_result"]
    assert answer["class"] == CLASSES and answer["class_id"] == [0, 2, 1]
    assert np.allclose(np.sum(answer["probabilities"], axis=1), 1, atol=1e-5)
    assert gateway.run(endpoint, FEATURES=[1, 2]).status_code == 400

    client = triton.InferenceServerClient(url=f"127.0.0.1:{gateway.port}")
    try:
        features = triton.InferInput("FEATURES", [3, 4], "FP32")
        features.set_data_from_numpy(np.array(FLOWERS, dtype=np.float32))
        result = client.infer(endpoint, [features])
        assert result.as_numpy("class").tolist() == [c.encode() for c in CLASSES]
        assert result.as_numpy("probabilities").shape == (3, 3)
        assert client.get_model_metadata(endpoint)["inputs"][0]["shape"] == [-1, 4]
    finally:
        client.close()

    batches = []  # concurrent requests share one run of the model

    def call(flower):
        batches.append(gateway.run(endpoint, FEATURES=flower).json()["predict_result"]["class"])

    threads = [threading.Thread(target=call, args=(FLOWERS[i % 3],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(map(tuple, batches)) == sorted([(CLASSES[i % 3],) for i in range(12)])

    gateway.stop()
    again = started(app)  # a restart loads the file it made
    assert model_file.stat().st_mtime_ns == made
    assert again.run(endpoint, FEATURES=FLOWERS[0]).json()["predict_result"]["class"] == ["setosa"]


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_a_missing_or_corrupt_model_file_fails_the_endpoint_naming_it(tmp_path, started, example):
    off = {"sklearn_iris": "TRAIN_IF_MISSING", "onnx_classifier": "CONVERT_IF_MISSING"}[example]
    app, endpoint, model_file = example_app(tmp_path / "missing", example, **{off: False})
    gateway = started(app, wait_ready=False)
    failed = gateway.wait_state(endpoint, "FAILED", timeout=60)
    assert f"model file {model_file.relative_to(app)} does not exist" in failed["ERROR"]
    assert failed["RESTARTS"] == 0  # a load failure is not restarted in a loop
    gateway.stop()

    app, endpoint, model_file = example_app(tmp_path / "corrupt", example)
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"this is not a model")
    gateway = started(app, wait_ready=False)
    failed = gateway.wait_state(endpoint, "FAILED", timeout=60)
    assert f"model file {model_file.relative_to(app)}" in failed["ERROR"]
    assert "Traceback" not in failed["ERROR"]
    assert gateway.run(endpoint, FEATURES=FLOWERS[0]).status_code == 503
