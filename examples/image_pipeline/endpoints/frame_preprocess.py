"""Step 2 of classify_frame: the frame resized to SIZE x SIZE (nearest pixel) and normalised
with ImageNet's mean and deviation, channels first, float32: what a vision model takes.

It receives frame_decoder's value as it returned it, ``{"frame": array}``, the array a read-only
view of what came (no copy, no JSON); it returns a new array for the next step.
"""

import numpy as np

from basic_inference_server import FlaskWorker

_CONFIG = {"SIZE": 224}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class FramePreprocessWorker(FlaskWorker):
    def _pre_process(self, value):
        return value["frame"]

    def _predict(self, frame):
        size = int(self.cfg_size)
        rows = np.arange(size) * frame.shape[0] // size
        cols = np.arange(size) * frame.shape[1] // size
        small = frame[rows][:, cols].astype(np.float32) / 255.0
        return np.ascontiguousarray(((small - MEAN) / STD).transpose(2, 0, 1))

    def _post_process(self, tensor):
        return {"tensor": tensor}
