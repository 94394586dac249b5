"""An ONNX Runtime classifier of iris flowers, batched: each batch is one ``session.run``.

The model file is made the first time from a scikit-learn classifier trained on the iris data
that scikit-learn ships (converted by skl2onnx; nothing is downloaded) and read from MODEL_FILE
afterwards. One session serves every worker of the process (ONNX Runtime's ``run`` is
thread-safe), with its threads set so that the workers do not oversubscribe the cores:

    intra-op threads = max(1, CPUs this process may use // NR_WORKERS), inter-op threads = 1

(INTRA_OP_THREADS overrides it). Inputs: FEATURES, one flower (4 numbers, in cm) or a list of
them; over V2, an FP32 tensor of shape [n, 4].
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from basic_inference_server import FlaskWorker

_CONFIG = {
    "MODEL_FILE": "_cache/_models/iris_classifier.onnx",
    "CONVERT_IF_MISSING": True,
    "INTRA_OP_THREADS": 0,  # 0: the rule above
}
GATEWAY_DEFAULT_WORKERS = 5  # NR_WORKERS when the endpoint's entry does not say


def convert(path: Path) -> None:
    """Train the scikit-learn classifier and write it as ONNX to ``path`` (atomically)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    model = LogisticRegression(max_iter=1000).fit(data.data, data.target)
    onnx_model = to_onnx(model, data.data[:1].astype(np.float32), options={id(model): {"zipmap": False}})
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps([str(name) for name in data.target_names])
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(onnx_model.SerializeToString())
    os.replace(tmp.name, path)


def intra_op_threads(config) -> int:
    if config["INTRA_OP_THREADS"]:
        return int(config["INTRA_OP_THREADS"])
    workers = int(config.get("NR_WORKERS", GATEWAY_DEFAULT_WORKERS))
    return max(1, len(os.sched_getaffinity(0)) // workers)


class OnnxClassifierWorker(FlaskWorker):
    MODEL_METADATA = {
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "FEATURES", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "class", "datatype": "BYTES", "shape": [-1]},
                    {"name": "class_id", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    }

    @classmethod
    def _load_shared(cls, config):
        path = Path(config["MODEL_FILE"])
        if not path.exists():
            if not config["CONVERT_IF_MISSING"]:
                raise FileNotFoundError(f"model file {path} does not exist (CONVERT_IF_MISSING is off)")
            convert(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads(config)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - whatever the library raises, the file is bad
            raise ValueError(f"model file {path} is not a valid ONNX model: {exc}") from None
        names = json.loads(session.get_modelmeta().custom_metadata_map.get("class_names", "[]"))
        return {"session": session, "input": session.get_inputs()[0].name, "class_names": names}

    def _pre_process(self, inputs):
        features = np.asarray(inputs.get("FEATURES"), dtype=np.float32)
        if features.ndim == 1:
            features = features[None, :]
        if features.ndim != 2 or features.shape[1] != 4 or not len(features):
            raise ValueError("FEATURES must be 4 numbers per flower (one flower, or a list of them)")
        return features

    def _predict(self, batch):
        if not isinstance(batch, list):  # batching off
            return self._predict([batch])[0]
        sizes = [len(features) for features in batch]
        model = self.shared
        labels, probabilities = model["session"].run(None, {model["input"]: np.concatenate(batch)})
        splits = np.cumsum(sizes)[:-1]
        return list(zip(np.split(labels, splits), np.split(probabilities, splits), strict=True))

    def _post_process(self, prediction):
        labels, probabilities = prediction
        names = self.shared["class_names"]
        return {"class": [names[i] for i in labels], "class_id": labels.astype(np.int64),
                "probabilities": probabilities}
