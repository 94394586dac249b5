"""Bench: one step of the pipeline benchmark (OP: decode, preprocess, classify, or noop for the
per-step overhead; frame and shape for bench.copies: the same 1080p frame each time, and the
shape of what came, its data never read), the code of bench/pipeline_steps.py, as a gateway endpoint. In a pipeline
each step gets the value the step before returned (an array); called alone, as a client chaining
``/run`` calls does, it gets the JSON body (``{"value": ...}``), which the step code takes too."""

from basic_inference_server import FlaskWorker
from bench import pipeline_steps

FRAME = pipeline_steps.decode(pipeline_steps.BODY)

_CONFIG = {"OP": "decode"}


class BenchPipeWorker(FlaskWorker):
    def _pre_process(self, inputs):
        if self.cfg_op in ("decode", "noop", "frame"):
            return inputs
        return inputs["value"] if isinstance(inputs, dict) and "value" in inputs else inputs

    def _predict(self, value):
        if self.cfg_op == "noop":
            return value
        if self.cfg_op == "frame":
            return FRAME
        if self.cfg_op == "shape":
            return {"shape": list(value.shape)}
        return getattr(pipeline_steps, self.cfg_op)(value)

    def _post_process(self, result):
        return result
