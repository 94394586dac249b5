"""Step 3 of classify_frame: class scores for the (3, SIZE, SIZE) tensor, and the TOP_K classes.

The "model" is small and fixed: the tensor pooled to a 3 x 8 x 8 grid, then a linear layer
whose weights are drawn once from a fixed seed (the same in every worker and every run) and a
softmax. Its answer is the pipeline's: JSON, in the usual envelope.
"""

import numpy as np

from basic_inference_server import FlaskWorker

_CONFIG = {"TOP_K": 3}
CLASSES = ["sky", "road", "person", "car", "tree", "building", "water", "animal"]
GRID = 8


class FrameClassifierWorker(FlaskWorker):
    def _load_model(self):
        rng = np.random.default_rng(20261207)
        self.weights = rng.normal(0, 0.5, (3 * GRID * GRID, len(CLASSES))).astype(np.float32)

    def _pre_process(self, value):
        tensor = value["tensor"]
        channels, height, width = tensor.shape
        cut = tensor[:, :height - height % GRID, :width - width % GRID]
        return cut.reshape(channels, GRID, height // GRID, GRID, width // GRID).mean(axis=(2, 4)).ravel()

    def _predict(self, features):
        logits = features @ self.weights
        scores = np.exp(logits - logits.max())
        return scores / scores.sum()

    def _post_process(self, scores):
        top = np.argsort(scores)[::-1][: int(self.cfg_top_k)]
        return {"top_k": [{"class": CLASSES[i], "score": round(float(scores[i]), 6)} for i in top],
                "scores": {name: round(float(score), 6) for name, score in zip(CLASSES, scores, strict=True)}}
