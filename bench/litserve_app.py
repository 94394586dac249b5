"""The bench's dummy and numpy models served by LitServe with its defaults (for comparison only).

    <litserve venv>/bin/python bench/litserve_app.py {dummy|numpy} PORT

Run by ``python -m bench --litserve``, in its own virtual environment (bench/.venv-litserve).
Requests are the same JSON bodies as the gateway's; the route is LitServe's ``/predict``.
"""

import sys

import litserve as ls
import numpy as np


class DummyAPI(ls.LitAPI):
    def setup(self, device):
        self.weight, self.bias = 2, 1

    def decode_request(self, request):
        return float(request["INPUT_VALUE"])

    def predict(self, value):
        return value * self.weight + self.bias

    def encode_response(self, output):
        return {"y": output}


class NumpyAPI(ls.LitAPI):
    def setup(self, device):
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal(1000)
        self.matrix = rng.standard_normal((200, 200))

    def decode_request(self, request):
        return np.asarray(request["VALUES"], dtype=np.float64)

    def predict(self, values):
        work = self.matrix
        for _ in range(4):  # the same work as bench/endpoints/bench_numpy.py
            work = np.tanh(work @ self.matrix * 0.01)
        return float(values @ self.weights) + float(work[0, 0]) * 0.0

    def encode_response(self, output):
        return {"score": output}


if __name__ == "__main__":
    model, port = sys.argv[1], int(sys.argv[2])
    api = {"dummy": DummyAPI, "numpy": NumpyAPI}[model]()
    ls.LitServer(api).run(port=port)
