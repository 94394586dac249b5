"""Bench: many FP32 numbers in (a JSON list from /run, an FP32 tensor over V2), their sum out: the
cost of moving a large tensor, JSON against the V2 binary extension."""

import numpy as np

from basic_inference_server import FlaskWorker


class BenchTensorWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return np.asarray(inputs["VALUES"], dtype=np.float32)

    def _predict(self, values):
        return float(values.sum(dtype=np.float64))

    def _post_process(self, pred):
        return {"sum": pred}
