"""A small embeddings model for the OpenAI-compatible routes: TF-IDF + truncated SVD (latent
semantic analysis), batched.

The first time the endpoint starts it fits, on the paragraphs of the Python help texts (see
``_text_corpus``), a TF-IDF weighting of their words (sublinear counts, words seen in at least two
paragraphs) reduced to DIMENSIONS dimensions by a truncated SVD, then scaled to length 1, so that
the dot product of two embeddings is their cosine similarity: texts about the same things (complex
and floating point numbers) are nearer than texts about different ones (numbers and loops). The
pipeline is saved with joblib to MODEL_FILE and loaded from there afterwards, once per process.

``input`` is a string or a list of strings, one vector each, in order; a text with none of the
model's words is the zero vector. With ``MAX_BATCH_SIZE`` > 1 the texts of the requests waiting
together are one ``transform``.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from basic_inference_server import FlaskWorker

from ._text_corpus import load_or_train, paragraphs, write_atomically

_CONFIG = {
    "MODEL_FILE": "_cache/_models/text_embed.joblib",
    "TRAIN_IF_MISSING": True,
}

DIMENSIONS = 64


def train(path: Path) -> None:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2),
                          TruncatedSVD(DIMENSIONS, random_state=0), Normalizer())
    model.fit(paragraphs())
    write_atomically(path, lambda file: joblib.dump(model, file))


def load(path: Path):
    model = joblib.load(path)
    width = model.transform(["a sentence"]).shape[1]
    if width != DIMENSIONS:
        raise ValueError(f"it makes vectors of {width} numbers, not {DIMENSIONS}")
    return model


class TextEmbedWorker(FlaskWorker):
    @classmethod
    def _load_shared(cls, config):
        return load_or_train(config, train, load)  # one copy: transform only reads it

    def _pre_process(self, body):
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
            raise ValueError("input should be a non-empty string or a non-empty list of them "
                             "(this model reads text, not token ids)")
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != DIMENSIONS:
            raise ValueError(f"dimensions: this model makes vectors of {DIMENSIONS} numbers, got {dimensions!r}")
        return tuple(texts)

    def _predict(self, batch):
        # MAX_BATCH_SIZE > 1: a list of the requests' tuples of texts, embedded in one call, split back.
        if not isinstance(batch, list):  # batching off
            return self._predict([batch])[0]
        vectors = self.shared.transform([text for texts in batch for text in texts]).astype(np.float32)
        return np.split(vectors, np.cumsum([len(texts) for texts in batch])[:-1])
