"""Bench: pure-Python CPU work that holds the GIL (about 20 ms per call): replicas are what scale it."""

from basic_inference_server import FlaskWorker

_CONFIG = {"ITERATIONS": 240000}


class BenchCpuWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return int(inputs["INPUT_VALUE"])

    def _predict(self, seed):
        total = seed
        for i in range(self.cfg_iterations):
            total = (total * 31 + i) % 1000003
        return total

    def _post_process(self, pred):
        return {"y": pred}
