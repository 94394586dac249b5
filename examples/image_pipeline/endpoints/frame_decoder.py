"""Step 1 of classify_frame: a frame as a (height, width, 3) uint8 array.

Inputs: ``FRAME_B64`` (raw RGB bytes, base64) with ``WIDTH`` and ``HEIGHT``; or only ``WIDTH`` and
``HEIGHT`` (default 1920 x 1080) and ``SEED``: a synthetic test card of that size (colour bars and
noise), as a camera would send. What it returns goes to frame_preprocess as it is: the array
itself, not JSON.
"""

import base64
import binascii

import numpy as np

from basic_inference_server import FlaskWorker, InputError


class FrameDecoderWorker(FlaskWorker):
    def _pre_process(self, inputs):
        width, height = int(inputs.get("WIDTH", 1920)), int(inputs.get("HEIGHT", 1080))
        if not (1 <= width <= 8192 and 1 <= height <= 8192):
            raise InputError(f"WIDTH and HEIGHT: expected 1 to 8192, got {width} x {height}")
        raw = inputs.get("FRAME_B64")
        if raw is None:
            return width, height, None, int(inputs.get("SEED", 0))
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, TypeError) as exc:
            raise InputError(f"FRAME_B64: not base64: {exc}") from None
        if len(data) != width * height * 3:
            raise InputError(f"FRAME_B64: {len(data)} bytes, expected {width} x {height} x 3 = {width * height * 3}")
        return width, height, data, 0

    def _predict(self, request):
        width, height, data, seed = request
        if data is not None:
            return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
        bars = np.array([[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0],
                         [0, 0, 192]], dtype=np.uint8)
        frame = np.repeat(bars[np.arange(width) * len(bars) // width][None, :, :], height, axis=0)
        noise = np.random.default_rng(seed).integers(0, 32, (height, width, 3), dtype=np.uint8)
        return frame + noise

    def _post_process(self, frame):
        return {"frame": frame}
