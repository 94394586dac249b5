"""Bench: a real model, the ONNX iris classifier of examples/onnx_classifier (the file named by
BENCH_ONNX_FILE), one flower per request; with MAX_BATCH_SIZE > 1 a batch is one session.run.
The peers serve the same file with the same code (bench/peer_models.py, OnnxIris)."""

import os

import numpy as np
import onnxruntime as ort

from basic_inference_server import FlaskWorker


class BenchOnnxWorker(FlaskWorker):
    @classmethod
    def _load_shared(cls, config):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # the bench pins a server to one CPU
        session = ort.InferenceSession(os.environ["BENCH_ONNX_FILE"], options, providers=["CPUExecutionProvider"])
        return session, session.get_inputs()[0].name

    def _pre_process(self, inputs):
        return np.asarray(inputs["FEATURES"], dtype=np.float32).reshape(-1, 4)

    def _predict(self, batch):
        session, name = self.shared
        if not isinstance(batch, list):
            labels, probabilities = session.run(None, {name: batch})
            return labels, probabilities
        sizes = np.cumsum([len(features) for features in batch])[:-1]
        labels, probabilities = session.run(None, {name: np.concatenate(batch)})
        return list(zip(np.split(labels, sizes), np.split(probabilities, sizes), strict=True))

    def _post_process(self, prediction):
        labels, probabilities = prediction
        return {"class_id": labels.tolist(), "probabilities": probabilities.tolist()}
