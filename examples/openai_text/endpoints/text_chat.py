"""A small chat model for the OpenAI-compatible routes: a word-level trigram language model.

It learns, the first time the endpoint starts, which word follows each pair of words in the Python
help texts (see ``_text_corpus``), saves the counts to MODEL_FILE (a NumPy ``.npz``: arrays only,
nothing is unpickled when it is read back) and loads them from there afterwards, once per process.

An answer continues the last user message: from its last two words the model knows, it picks the
next word among those that followed them in the text (or that followed the last word alone, when
the pair was never seen: the backoff), one word at a time, until it ends a paragraph.
``temperature`` reshapes the counts (0: always the most frequent word), ``top_p`` keeps the most
likely words whose probabilities add up to it, and ``seed`` makes the choice repeatable. Each word
is one streamed piece, after a space except the first. A ``prompt`` (the completions route) is
continued the same way.

``max_completion_tokens`` (or ``max_tokens``, at most MAX_TOKENS, which is also the length when
neither is given) bounds the words: the model makes that many and, when the paragraph goes on,
one more, which the OpenAI route never sends: it is how the route knows to answer finish_reason
"length" rather than "stop" (``/run``, which cuts nothing, sends it too).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from basic_inference_server import FlaskWorker

from ._text_corpus import load_or_train, paragraphs, write_atomically

_CONFIG = {
    "MODEL_FILE": "_cache/_models/text_chat.npz",
    "TRAIN_IF_MISSING": True,
    "MAX_TOKENS": 256,  # the most words one answer may ask for, and what it gets when it does not say
}

START, END = "<p>", "</p>"  # before a paragraph's first word, after its last: the first two words
START_ID, END_ID = 0, 1
_PUNCTUATION = "\"'“”‘’()[]{}.,;:!?*"


def _norm(word: str) -> str:
    return word.strip(_PUNCTUATION).lower()


class TrigramModel:
    """Counts of the words that follow each pair of words (and each word) in a text.

    Rows are sorted by context, then by count from the most frequent, so that the candidates of a
    context are one slice, most likely first.
    """

    def __init__(self, vocabulary: np.ndarray, trigrams: np.ndarray, bigrams: np.ndarray):
        self.vocabulary = [str(word) for word in vocabulary]
        self.trigrams = trigrams  # rows (a, b, c, count): c followed "a b"
        self.bigrams = bigrams  # rows (b, c, count): c followed b
        size = len(self.vocabulary)
        self._trigram_keys = trigrams[:, 0].astype(np.int64) * size + trigrams[:, 1]
        self._bigram_keys = bigrams[:, 0]
        followed = np.unique(self._bigram_keys)  # every word but END is followed by one
        if self.vocabulary[:2] != [START, END] or np.any(np.diff(self._trigram_keys) < 0) \
                or np.any(np.diff(self._bigram_keys) < 0) or bigrams[:, 1].max(initial=0) >= size \
                or not np.array_equal(followed, np.delete(np.arange(size), END_ID)):
            raise ValueError("the arrays are not those of a trigram model")
        # A prompt's word -> the id of its most frequent spelling in the text ("for" -> '"for"' if
        # that is the usual one); a word of punctuation only matches nothing.
        frequency = np.bincount(bigrams[:, 0], weights=bigrams[:, 2], minlength=size)
        self._known: dict[str, int] = {}
        for word_id in np.argsort(-frequency, kind="stable"):
            norm = _norm(self.vocabulary[word_id])
            if word_id > END_ID and norm:
                self._known.setdefault(norm, int(word_id))

    @classmethod
    def train(cls, texts: list[str]) -> TrigramModel:
        """Count the trigrams and bigrams of ``texts`` (paragraphs, words split on spaces)."""
        ids: dict[str, int] = {START: START_ID, END: END_ID}
        sequence = []
        for text in texts:
            sequence += [START_ID, START_ID, *(ids.setdefault(word, len(ids)) for word in text.split()), END_ID]
        seq = np.asarray(sequence, dtype=np.int64)
        size = len(ids)
        a, b, c = seq[:-2], seq[1:-1], seq[2:]
        inside = (a != END_ID) & (b != END_ID) & (c != START_ID)  # no trigram across two paragraphs
        keys, counts = np.unique((a[inside] * size + b[inside]) * size + c[inside], return_counts=True)
        trigrams = np.stack([keys // size // size, keys // size % size, keys % size, counts], axis=1)
        b, c = seq[:-1], seq[1:]
        inside = (b != END_ID) & (c != START_ID)
        keys, counts = np.unique(b[inside] * size + c[inside], return_counts=True)
        bigrams = np.stack([keys // size, keys % size, counts], axis=1)
        trigrams = trigrams[np.lexsort((trigrams[:, 2], -trigrams[:, 3], trigrams[:, 0] * size + trigrams[:, 1]))]
        bigrams = bigrams[np.lexsort((bigrams[:, 1], -bigrams[:, 2], bigrams[:, 0]))]
        return cls(np.array(list(ids)), trigrams.astype(np.int32), bigrams.astype(np.int32))

    def save(self, path: Path) -> None:
        write_atomically(path, lambda file: np.savez_compressed(
            file, vocabulary=np.array(self.vocabulary), trigrams=self.trigrams, bigrams=self.bigrams))

    @classmethod
    def load(cls, path: Path) -> TrigramModel:
        with np.load(path, allow_pickle=False) as arrays:
            return cls(arrays["vocabulary"], arrays["trigrams"], arrays["bigrams"])

    def context(self, words: list[str]) -> tuple[int, int]:
        """The ids of the last two words of ``words`` that the model knows (-1: the one before the
        last is not known; START_ID: none is, the answer starts a paragraph)."""
        ids = [self._known.get(_norm(word), -1) for word in words]
        while ids and ids[-1] < 0:  # trailing unknown words: continue from the last known one
            ids.pop()
        if not ids:
            return START_ID, START_ID
        return (ids[-2] if len(ids) > 1 else START_ID), ids[-1]

    def candidates(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """The words that may follow ``a b`` and their counts, the most frequent first: after the
        pair if it was seen, else after ``b`` alone (every word of the text has a next one, if only
        the end of its paragraph)."""
        if a >= 0:
            key = a * len(self.vocabulary) + b
            low, high = np.searchsorted(self._trigram_keys, [key, key + 1])
            if high > low:
                return self.trigrams[low:high, 2], self.trigrams[low:high, 3]
        low, high = np.searchsorted(self._bigram_keys, [b, b + 1])
        return self.bigrams[low:high, 1], self.bigrams[low:high, 2]

    def generate(self, words: list[str], max_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, lead: str = "") -> Iterator[str]:
        """Continue ``words``: yield at most ``max_tokens`` words, each after a space but the
        first (which comes after ``lead``)."""
        rng = random.Random(seed)
        a, b = self.context(words)
        for index in range(max_tokens):
            ids, counts = self.candidates(a, b)
            word = choose(ids, counts, temperature, top_p, rng)
            if word == END_ID:
                return  # the end of a paragraph: the answer is complete
            yield (" " if index else lead) + self.vocabulary[word]
            a, b = b, word


def choose(ids: np.ndarray, counts: np.ndarray, temperature: float, top_p: float, rng: random.Random) -> int:
    """Draw one of ``ids`` (sorted by ``counts``, the largest first) with probability proportional
    to ``count ** (1 / temperature)``, among the fewest most likely whose probabilities add up to
    ``top_p``; temperature 0 is the most frequent."""
    if temperature == 0 or len(ids) == 1:
        return int(ids[0])
    logits = np.log(counts) / temperature
    probabilities = np.exp(logits - logits[0])  # counts[0] is the largest: no overflow
    probabilities /= probabilities.sum()
    cumulative = np.cumsum(probabilities)
    if top_p < 1:
        keep = int(np.searchsorted(cumulative, top_p)) + 1  # the first words reaching top_p
        cumulative = cumulative[:keep] / cumulative[min(keep, len(cumulative)) - 1]
    return int(ids[min(bisect.bisect_right(cumulative.tolist(), rng.random()), len(cumulative) - 1)])


def train(path: Path) -> None:
    TrigramModel.train(paragraphs()).save(path)


@dataclass(frozen=True)
class Request:
    words: list[str]
    max_tokens: int | None  # None: not asked
    temperature: float
    top_p: float
    seed: int | None
    lead: str  # before the first word: "" for a chat answer, " " to continue a prompt


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts: the text ones
        content = " ".join(part.get("text", "") for part in content
                           if isinstance(part, dict) and part.get("type") == "text")
    if not isinstance(content, str):
        raise ValueError("the last user message should have a text content")
    return content


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{key} should be a number between {low:g} and {high:g}, got {value!r}")
    return float(value)


class TextChatWorker(FlaskWorker):
    @classmethod
    def _load_shared(cls, config):
        return load_or_train(config, train, TrigramModel.load)  # one copy, read by every worker

    def _pre_process(self, body):
        if "messages" in body:
            messages = body["messages"] if isinstance(body["messages"], list) else []
            users = [message for message in messages if isinstance(message, dict) and message.get("role") == "user"]
            if not users:
                raise ValueError("messages should be a list with at least one user message")
            text, lead = _message_text(users[-1]), ""
        elif "prompt" in body:
            text, lead = body["prompt"], " "
            if isinstance(text, list) and len(text) == 1:
                text = text[0]
            if not isinstance(text, str):
                raise ValueError("prompt should be a string")
        else:
            raise ValueError("messages (chat) or prompt (completions) should be given")
        limit = self.cfg_max_tokens
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or not 1 <= max_tokens <= limit):
            raise ValueError(f"max_tokens should be an integer between 1 and {limit}, got {max_tokens!r}")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed should be an integer, got {seed!r}")
        return Request(text.split(), max_tokens, _number(body, "temperature", 1.0, 0, 2),
                       _number(body, "top_p", 1.0, 0, 1), seed, lead)

    def _predict(self, request):
        # The route sends max_tokens pieces and, when one more comes, closes the generator and answers
        # finish_reason "length": one word more than asked tells it the paragraph was cut.
        bound = self.cfg_max_tokens if request.max_tokens is None else request.max_tokens + 1
        return self.shared.generate(request.words, bound, request.temperature, request.top_p, request.seed,
                                    request.lead)
