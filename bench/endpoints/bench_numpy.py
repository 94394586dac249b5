"""Bench: 1,000 floats in, a dot product with a fixed vector plus about 2 ms of numpy work."""

import numpy as np

from basic_inference_server import FlaskWorker

_CONFIG = {"SIZE": 1000, "WORK_ROUNDS": 4}


class BenchNumpyWorker(FlaskWorker):
    def _load_model(self):
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal(self.cfg_size)
        self.matrix = rng.standard_normal((200, 200))

    def _pre_process(self, inputs):
        values = np.asarray(inputs["VALUES"], dtype=np.float64)
        if values.shape != (self.cfg_size,):
            raise ValueError(f"VALUES must hold {self.cfg_size} numbers")
        return values

    def _predict(self, values):
        work = self.matrix
        for _ in range(self.cfg_work_rounds):  # ~2 ms of compute that holds the GIL part of the time
            work = np.tanh(work @ self.matrix * 0.01)
        return float(values @ self.weights) + float(work[0, 0]) * 0.0

    def _post_process(self, pred):
        return {"score": pred}
