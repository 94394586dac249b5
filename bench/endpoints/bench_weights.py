"""Bench: a model of SIZE_MB of weights (resident: every page written), loaded per worker in
_load_model, or once per server process in _load_shared when SHARED is true."""

import numpy as np

from basic_inference_server import FlaskWorker

_CONFIG = {"SIZE_MB": 200, "SHARED": False}


def weights(size_mb: float) -> np.ndarray:
    return np.full(int(size_mb * 1024 * 1024 / 8), 0.5)  # float64, written: resident


class BenchWeightsWorker(FlaskWorker):
    @classmethod
    def _load_shared(cls, config):
        return weights(config["SIZE_MB"]) if config["SHARED"] else None

    def _load_model(self):
        self.weights = self.shared if self.cfg_shared else weights(self.cfg_size_mb)

    def _predict(self, inputs):
        return float(self.weights[:1000].sum())

    def _post_process(self, pred):
        return {"sum": pred}
