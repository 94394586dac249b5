"""A scikit-learn classifier of iris flowers, served with batching and one copy of the model.

The model is trained on the iris data that scikit-learn ships (nothing is downloaded) the first
time the endpoint starts, saved with joblib to MODEL_FILE, and loaded from there afterwards.
Inputs: FEATURES, one flower (4 numbers: sepal length, sepal width, petal length, petal width,
in cm) or a list of them; over V2, an FP32 tensor of shape [n, 4].
"""

import os
import tempfile
from pathlib import Path

import joblib
import numpy as np

from basic_inference_server import FlaskWorker

_CONFIG = {
    "MODEL_FILE": "_cache/_models/iris_classifier.joblib",
    "TRAIN_IF_MISSING": True,
}


def train(path: Path) -> None:
    """Fit the classifier on scikit-learn's iris data and save it to ``path`` (atomically: a
    replica starting at the same time reads a whole file or none)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    model = LogisticRegression(max_iter=1000).fit(data.data, data.target)
    model.class_names_ = [str(name) for name in data.target_names]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        joblib.dump(model, tmp)
    os.replace(tmp.name, path)


class IrisClassifierWorker(FlaskWorker):
    MODEL_METADATA = {
        "platform": "sklearn",
        "inputs": [{"name": "FEATURES", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "class", "datatype": "BYTES", "shape": [-1]},
                    {"name": "class_id", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    }

    @classmethod
    def _load_shared(cls, config):
        path = Path(config["MODEL_FILE"])
        if not path.exists():
            if not config["TRAIN_IF_MISSING"]:
                raise FileNotFoundError(f"model file {path} does not exist (TRAIN_IF_MISSING is off)")
            train(path)
        try:
            model = joblib.load(path)
            model.predict_proba(np.zeros((1, 4)))
        except Exception as exc:  # noqa: BLE001 - whatever the library raises, the file is bad
            raise ValueError(f"model file {path} cannot be loaded: {type(exc).__name__}: {exc}") from None
        return model  # one copy for every worker: predict_proba only reads it

    def _pre_process(self, inputs):
        features = np.asarray(inputs.get("FEATURES"), dtype=np.float64)
        if features.ndim == 1:
            features = features[None, :]
        if features.ndim != 2 or features.shape[1] != 4 or not len(features):
            raise ValueError("FEATURES must be 4 numbers per flower (one flower, or a list of them)")
        return features

    def _predict(self, batch):
        # MAX_BATCH_SIZE > 1: one list of the requests' arrays, run as one call, split back.
        if not isinstance(batch, list):  # batching off
            return self._predict([batch])[0]
        sizes = [len(features) for features in batch]
        probabilities = self.shared.predict_proba(np.concatenate(batch))
        return np.split(probabilities, np.cumsum(sizes)[:-1])

    def _post_process(self, probabilities):
        ids = probabilities.argmax(axis=1)
        return {"class": [self.shared.class_names_[i] for i in ids], "class_id": ids,
                "probabilities": probabilities.astype(np.float32)}
