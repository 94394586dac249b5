"""The three steps of the pipeline benchmark (bench/pipelines.py), one code for every system: the
gateway's steps (bench/endpoints/bench_pipe.py), Aqueduct's FlowSteps (bench/aqueduct_app.py
``pipeline``) and the client that chains ``/run`` calls.

- ``decode``: a 1920 x 1080 x 3 uint8 frame (6 MB) from a small request (``W``, ``H``, ``SEED``),
  as a camera source would give it: colour bars, shifted by the seed;
- ``preprocess``: nearest-pixel resize to 224 x 224, normalised with ImageNet's mean and
  deviation, channels first, float32 (600 KB);
- ``classify``: pooled to a 3 x 8 x 8 grid, a fixed linear layer and a softmax: the top 3 of 8
  classes (JSON).
"""

import numpy as np

BARS = np.array([[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0],
                 [0, 0, 192]], dtype=np.uint8)
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CLASSES = ["sky", "road", "person", "car", "tree", "building", "water", "animal"]
SIZE, GRID = 224, 8
WEIGHTS = np.random.default_rng(20261207).normal(0, 0.5, (3 * GRID * GRID, len(CLASSES))).astype(np.float32)
BODY = {"W": 1920, "H": 1080, "SEED": 3}


def decode(body: dict) -> np.ndarray:
    width, height = int(body.get("W", 1920)), int(body.get("H", 1080))
    row = BARS[np.arange(width) * len(BARS) // width] + np.uint8(int(body.get("SEED", 0)) % 32)
    return np.repeat(row[None, :, :], height, axis=0)


def preprocess(frame) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.uint8)  # (a JSON list, when a client chains the calls)
    rows = np.arange(SIZE) * frame.shape[0] // SIZE
    cols = np.arange(SIZE) * frame.shape[1] // SIZE
    small = frame[rows][:, cols].astype(np.float32) / 255.0
    return np.ascontiguousarray(((small - MEAN) / STD).transpose(2, 0, 1))


def classify(tensor) -> dict:
    tensor = np.asarray(tensor, dtype=np.float32)
    channels, height, width = tensor.shape
    features = tensor.reshape(channels, GRID, height // GRID, GRID, width // GRID).mean(axis=(2, 4)).ravel()
    logits = features @ WEIGHTS
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    top = np.argsort(scores)[::-1][:3]
    return {"top_k": [{"class": CLASSES[i], "score": round(float(scores[i]), 6)} for i in top]}
