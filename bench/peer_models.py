"""The bench models as the peer apps serve them: the computations of ``bench/endpoints`` (which run
inside our ``FlaskWorker``) written once for LitServe, Mosec and Aqueduct.

Each model splits like the endpoints: ``decode`` (``_pre_process``), ``predict_batch`` (``_predict``
on a list) and ``encode`` (``_post_process``). ``max_batch_size`` / ``batch_wait_s`` are what the peers
that batch are configured with. ``Stream`` yields its items instead (``items``, or ``aitems`` for a
peer that runs it in an event loop), ``Chat`` the same as text pieces. Standard library and numpy
only (and onnxruntime, imported by the ONNX models when they load): each peer runs in its own venv.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np


class BenchModel:
    max_batch_size = 1
    batch_wait_s = 0.0

    def setup(self) -> None:
        """Load the model, once per worker process."""

    def decode(self, request: dict) -> Any:
        raise NotImplementedError

    def predict_batch(self, items: list) -> list:
        return [self.predict(item) for item in items]

    def predict(self, item: Any) -> Any:
        return self.predict_batch([item])[0]

    def encode(self, output: Any) -> dict:
        raise NotImplementedError

    def answer(self, request: dict) -> dict:
        return self.encode(self.predict(self.decode(request)))

    def answer_batch(self, requests: list[dict]) -> list[dict]:
        return [self.encode(out) for out in self.predict_batch([self.decode(r) for r in requests])]


class Dummy(BenchModel):
    """bench_dummy: a linear model on one number (WEIGHT 2, BIAS 1)."""

    def decode(self, request):
        return float(request["INPUT_VALUE"])

    def predict(self, value):
        return value * 2 + 1

    def encode(self, output):
        return {"y": output}


class Numpy(BenchModel):
    """bench_numpy: 1,000 floats, a dot product and about 2 ms of numpy work (WORK_ROUNDS 4)."""

    def setup(self):
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal(1000)
        self.matrix = rng.standard_normal((200, 200))

    def decode(self, request):
        values = np.asarray(request["VALUES"], dtype=np.float64)
        if values.shape != (1000,):
            raise ValueError("VALUES must hold 1000 numbers")
        return values

    def predict(self, values):
        work = self.matrix
        for _ in range(4):
            work = np.tanh(work @ self.matrix * 0.01)
        return float(values @ self.weights) + float(work[0, 0]) * 0.0

    def encode(self, output):
        return {"score": output}


class Batch8(BenchModel):
    """bench_batch: 10 ms per call + 0.5 ms per item, sleeping (an accelerator-like call), batches
    of up to 8 gathered for up to 2 ms."""

    max_batch_size = 8
    batch_wait_s = 0.002

    def decode(self, request):
        return float(request["INPUT_VALUE"])

    def predict_batch(self, items):
        time.sleep((10.0 + 0.5 * len(items)) / 1000)
        return [value * 2 for value in items]

    def encode(self, output):
        return {"y": output}


class Large(BenchModel):
    """bench_large: the sum of 100,000 floats (a body of about 1 MB)."""

    def decode(self, request):
        values = request["VALUES"]
        if not isinstance(values, list):
            raise ValueError("VALUES must be a list of numbers")
        return values

    def predict(self, values):
        return float(sum(values))

    def encode(self, output):
        return {"sum": output}


class Stream(BenchModel):
    """bench_stream: 50 items, the k-th yielded 10 ms x k after the request reached the model (the
    first after 10 ms: the model's own first-item time), each with ``ms``, when it was yielded."""

    count = 50
    gap_s = 0.010
    first_s = gap_s  # the model's own time to its first item

    def decode(self, request):
        return request

    def items(self, _request) -> Iterator[dict]:
        start = time.perf_counter()
        for index in range(self.count):
            delay = start + self.first_s + self.gap_s * index - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            yield self._item(index, start)

    async def aitems(self, _request) -> AsyncIterator[dict]:
        start = time.perf_counter()
        for index in range(self.count):
            delay = start + self.first_s + self.gap_s * index - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            yield self._item(index, start)

    @staticmethod
    def _item(index: int, start: float) -> dict:
        return {"i": index, "ms": round((time.perf_counter() - start) * 1000, 3)}

    def encode(self, output):
        return output


class Chat(Stream):
    """bench_chat: Stream's schedule, each item a short word (`` w<k>``), as a token generator yields;
    its first after BENCH_FIRST_MS (bench_chat's FIRST_MS), Stream's GAP_MS without it."""

    first_s = float(os.environ.get("BENCH_FIRST_MS", Stream.gap_s * 1000)) / 1000

    @staticmethod
    def _item(index: int, start: float) -> str:
        return f" w{index}"


class OnnxIris(BenchModel):
    """bench_onnx: the ONNX iris classifier (the file BENCH_ONNX_FILE names), one flower per request,
    a batch as one session.run; ONNX Runtime with one thread (the serving process has one CPU)."""

    def setup(self):
        import os

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["BENCH_ONNX_FILE"], options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def decode(self, request):
        return np.asarray(request["FEATURES"], dtype=np.float32).reshape(-1, 4)

    def predict_batch(self, items):
        sizes = np.cumsum([len(features) for features in items])[:-1]
        labels, probabilities = self.session.run(None, {self.input: np.concatenate(items)})
        return list(zip(np.split(labels, sizes), np.split(probabilities, sizes), strict=True))

    def encode(self, output):
        labels, probabilities = output
        return {"class_id": labels.tolist(), "probabilities": probabilities.tolist()}


class OnnxIris8(OnnxIris):
    """bench_onnx batched as batch8: at most 8 per call, gathered for at most 2 ms."""

    max_batch_size = 8
    batch_wait_s = 0.002


MODELS: dict[str, type[BenchModel]] = {"dummy": Dummy, "numpy": Numpy, "batch8": Batch8, "large": Large,
                                       "stream": Stream, "chat": Chat, "onnx": OnnxIris, "onnx_b8": OnnxIris8}
STREAMED = ("stream",)  # models whose answer is a stream of items
CHAT = ("chat",)  # streamed text, served through an OpenAI chat route


def load(name: str) -> BenchModel:
    model = MODELS[name]()
    model.setup()
    return model
