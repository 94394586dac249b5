"""Bench: a linear model on one number — pure serving overhead."""

from basic_inference_server import FlaskWorker

_CONFIG = {"WEIGHT": 2, "BIAS": 1}


class BenchDummyWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return float(inputs["INPUT_VALUE"])

    def _predict(self, value):
        return value * self.cfg_weight + self.cfg_bias

    def _post_process(self, pred):
        return {"y": pred}
