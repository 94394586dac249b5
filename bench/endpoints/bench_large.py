"""Bench: a large body, 100,000 floats (about 1 MB of JSON) summed: the cost of moving big requests."""

from basic_inference_server import FlaskWorker


class BenchLargeWorker(FlaskWorker):
    def _pre_process(self, inputs):
        values = inputs["VALUES"]
        if not isinstance(values, list):
            raise ValueError("VALUES must be a list of numbers")
        return values

    def _predict(self, values):
        return float(sum(values))

    def _post_process(self, pred):
        return {"sum": pred}
