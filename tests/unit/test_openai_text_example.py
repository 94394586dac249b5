"""The models of examples/openai_text without a gateway: the trigram chat model (seed, temperature,
top_p, max_tokens), the TF-IDF + SVD embeddings (shape, length 1, related texts nearer, batches
split back in order), the model files made once and reused, and the workers' checks of the
OpenAI request bodies."""

from __future__ import annotations

import importlib
import random
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_text" / "endpoints"
QUESTION = "How does the for statement iterate over a sequence"


def _example_module(name: str) -> types.ModuleType:
    # The endpoint files import each other relatively: load them as a package of their own, so that
    # no other "endpoints" folder on sys.path is mixed in.
    package = "openai_text_example_endpoints"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [str(EXAMPLE)]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")


chat = _example_module("text_chat")
embed = _example_module("text_embed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def lm(cache):
    return chat.TextChatWorker._load_shared({"MODEL_FILE": str(cache / "text_chat.npz"), "TRAIN_IF_MISSING": True})


@pytest.fixture(scope="module")
def vectors(cache):
    return embed.TextEmbedWorker._load_shared({"MODEL_FILE": str(cache / "text_embed.joblib"),
                                               "TRAIN_IF_MISSING": True})


def chat_worker(model, **config) -> chat.TextChatWorker:
    worker = chat.TextChatWorker(default_config=chat._CONFIG, upstream_config=config)
    worker.shared = model
    return worker


def embed_worker(model) -> embed.TextEmbedWorker:
    worker = embed.TextEmbedWorker(default_config=embed._CONFIG)
    worker.shared = model
    return worker


def answer(worker, **body) -> list[str]:
    body.setdefault("messages", [{"role": "user", "content": QUESTION}])
    return list(worker._predict(worker._pre_process(body)))


# -- the text ----------------------------------------------------------------------------------

def test_the_text_is_the_prose_of_the_python_help_topics():
    texts = chat.paragraphs()
    assert len(texts) > 500 and sum(len(text.split()) for text in texts) > 20_000
    assert any('The "for" statement is used to iterate' in text for text in texts)
    assert not [text for text in texts if ">>>" in text or "::=" in text or "\n" in text]
    assert chat.paragraphs() == texts  # the same order every time: the same model


# -- the chat model ----------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_answer_and_other_seeds_other_answers(lm):
    worker = chat_worker(lm)
    first = answer(worker, seed=7, max_tokens=30)
    assert first and answer(worker, seed=7, max_tokens=30) == first
    assert len({"".join(answer(worker, seed=seed, max_tokens=30)) for seed in range(8)}) > 1


def test_the_answer_is_words_of_the_text_after_a_space_but_the_first(lm):
    pieces = answer(chat_worker(lm), seed=3, max_tokens=60)
    assert pieces[0] == pieces[0].strip() and all(piece.startswith(" ") for piece in pieces[1:])
    assert {piece.strip() for piece in pieces} <= set(lm.vocabulary[2:])


def test_no_word_pair_crosses_a_paragraph_end(lm):
    a, b, c = lm.trigrams[:, 0], lm.trigrams[:, 1], lm.trigrams[:, 2]
    assert not np.any((a == 1) | (b == 1) | (c == 0))  # 0: before a paragraph, 1: after it
    assert not np.any((lm.bigrams[:, 0] == 1) | (lm.bigrams[:, 1] == 0))
    assert np.any(c == 1) and np.any((a == 0) & (b == 0))  # paragraphs do start and end


def test_a_prompt_is_continued_after_a_space(lm):
    pieces = list(lm.generate(QUESTION.split(), 5, seed=1, lead=" "))
    assert pieces and all(piece.startswith(" ") for piece in pieces)


def test_temperature_zero_always_takes_the_most_frequent_next_word(lm):
    worker = chat_worker(lm)
    pieces = answer(worker, temperature=0, max_tokens=12)
    assert pieces == answer(worker, temperature=0, max_tokens=12, seed=99)  # no draw: the seed is irrelevant
    a, b = lm.context(QUESTION.split())
    for piece in pieces:
        ids, _ = lm.candidates(a, b)
        assert piece.strip() == lm.vocabulary[ids[0]]
        a, b = b, int(ids[0])


def test_top_p_keeps_only_the_likeliest_words():
    ids, counts = np.array([10, 11, 12, 13]), np.array([50, 30, 15, 5])
    draws = lambda **kw: {chat.choose(ids, counts, rng=random.Random(s), **kw) for s in range(300)}  # noqa: E731
    assert draws(temperature=1, top_p=1) == {10, 11, 12, 13}
    assert draws(temperature=1, top_p=0.8) == {10, 11}  # 0.5 + 0.3 reach 0.8
    assert draws(temperature=1, top_p=0.5) == {10}
    assert draws(temperature=1, top_p=0) == {10}


def test_temperature_sharpens_or_flattens_the_counts():
    ids, counts = np.array([1, 2]), np.array([3, 1])
    share = lambda t: np.mean([chat.choose(ids, counts, t, 1, random.Random(s)) == 1 for s in range(4000)])  # noqa: E731
    assert share(1) == pytest.approx(0.75, abs=0.03)
    assert share(0.25) == pytest.approx(81 / 82, abs=0.01)  # 3**4 : 1
    assert share(2) == pytest.approx(3**0.5 / (3**0.5 + 1), abs=0.03)


def test_top_p_zero_is_greedy_whatever_the_temperature(lm):
    worker = chat_worker(lm)
    greedy = answer(worker, temperature=0, max_tokens=20)
    assert answer(worker, temperature=1.5, top_p=0, seed=5, max_tokens=20) == greedy


def test_max_tokens_words_come_and_one_more_only_when_the_paragraph_goes_on(lm):
    # The route sends max_tokens pieces; the one more tells it to answer finish_reason "length".
    worker = chat_worker(lm)
    cut = []
    for seed in range(30):
        whole = answer(worker, seed=seed, max_tokens=200)
        assert answer(worker, seed=seed, max_tokens=5) == whole[:6]  # the same words, cut after the 6th
        cut.append(len(whole) > 5)
    assert any(cut) and not all(cut)  # some paragraphs go on (6 pieces), some end within 5
    assert len(answer(worker, temperature=0, max_tokens=50, max_completion_tokens=4)) == 5
    assert len(answer(worker, temperature=0, max_tokens=4, max_completion_tokens=None)) == 5
    assert len(list(lm.generate(QUESTION.split(), 4, temperature=0))) == 4
    assert len(answer(chat_worker(lm, MAX_TOKENS=6), temperature=0)) == 6  # none asked: the endpoint's limit


def test_the_last_user_message_seeds_the_answer(lm):
    worker = chat_worker(lm)
    messages = [{"role": "system", "content": "You are a parrot."},
                {"role": "user", "content": "Complex numbers"},
                {"role": "assistant", "content": "Yes?"},
                {"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    assert answer(worker, messages=messages, seed=4) == answer(worker, seed=4)
    assert answer(worker, seed=4) != answer(worker, seed=4, messages=[{"role": "user", "content": "Complex numbers"}])


def test_a_prompt_word_is_read_as_its_most_frequent_spelling_in_the_text(lm):
    frequency = Counter(word for text in chat.paragraphs() for word in text.split())
    for word in ("for", "THE", "exception", "numbers?"):
        spellings = [known for known in frequency if chat._norm(known) == chat._norm(word)]
        assert len(spellings) > 1
        assert lm.vocabulary[lm.context([word])[1]] == max(spellings, key=frequency.get)


def test_unknown_words_are_skipped_and_none_known_starts_a_paragraph(lm):
    assert lm.context([*QUESTION.split(), "xyzzy", "??"]) == lm.context(QUESTION.split())
    assert lm.context(["xyzzy", "plugh"]) == (0, 0)
    assert answer(chat_worker(lm), messages=[{"role": "user", "content": "xyzzy"}], temperature=0)


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "at least one user message"),
    ({"messages": [{"role": "system", "content": "hi"}]}, "at least one user message"),
    ({"messages": [{"role": "user", "content": 3}]}, "text content"),
    ({}, "messages (chat) or prompt"),
    ({"prompt": ["one", "two"]}, "prompt should be a string"),
    ({"prompt": "hi", "max_tokens": 0}, "between 1 and 256"),
    ({"prompt": "hi", "max_tokens": 257}, "between 1 and 256"),
    ({"prompt": "hi", "temperature": 2.5}, "temperature"),
    ({"prompt": "hi", "top_p": -0.1}, "top_p"),
    ({"prompt": "hi", "seed": "7"}, "seed"),
])
def test_a_bad_request_body_is_refused_with_what_is_wrong(lm, body, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        chat_worker(lm)._pre_process(body)


# -- the embeddings model ----------------------------------------------------------------------

def embeddings(model, *texts):
    return embed_worker(model)._predict(tuple(texts))


def test_embeddings_are_64_numbers_of_length_one_in_order(vectors):
    texts = ("Complex numbers have a real part.", "The for statement.", "Exceptions are raised.")
    result = embeddings(vectors, *texts)
    assert result.shape == (3, 64) and result.dtype == np.float32
    assert np.allclose(np.linalg.norm(result, axis=1), 1, atol=1e-5)
    assert np.allclose(result[1], embeddings(vectors, texts[1])[0], atol=1e-6)


def test_related_texts_are_nearer_than_unrelated_ones(vectors):
    complex_, floats, loop, exception, handler = embeddings(
        vectors, "Complex numbers have a real part and an imaginary part.",
        "A floating point number has a fractional part and an exponent.",
        "How does a for loop iterate over the items of a list?",
        "An exception is raised when an error occurs.",
        "The except clause of a try statement handles the exception.")
    assert complex_ @ floats > complex_ @ loop + 0.3
    assert exception @ handler > exception @ loop
    assert exception @ handler > handler @ floats


def test_a_batch_of_requests_is_one_transform_split_back_per_request(vectors):
    worker = embed_worker(vectors)
    requests = [worker._pre_process({"input": "the for statement"}),
                worker._pre_process({"input": ["complex numbers", "exceptions", "the while loop"]}),
                worker._pre_process({"input": ["classes"]})]
    results = worker._predict(requests)
    assert [len(result) for result in results] == [1, 3, 1]
    for request, result in zip(requests, results, strict=True):
        assert np.allclose(result, worker._predict(request), atol=1e-6)


@pytest.mark.parametrize("body, message", [
    ({"input": [1, 2, 3]}, "not token ids"),
    ({"input": []}, "non-empty"),
    ({"input": ["fine", ""]}, "non-empty"),
    ({}, "input should be"),
    ({"input": "x", "dimensions": 32}, "vectors of 64 numbers"),
])
def test_a_bad_embeddings_body_is_refused(vectors, body, message):
    with pytest.raises(ValueError, match=message):
        embed_worker(vectors)._pre_process(body)


# -- the model files ---------------------------------------------------------------------------

@pytest.mark.parametrize("module, file", [(chat, "text_chat.npz"), (embed, "text_embed.joblib")])
def test_the_model_file_is_made_once_then_reused(tmp_path, monkeypatch, module, file):
    worker_class = module.TextChatWorker if module is chat else module.TextEmbedWorker
    config = {"MODEL_FILE": str(tmp_path / "_models" / file), "TRAIN_IF_MISSING": True}
    first = worker_class._load_shared(config)
    path = tmp_path / "_models" / file
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [file]  # no temporary left
    made = path.stat().st_mtime_ns

    def no_training(path):
        raise AssertionError("trained again")

    monkeypatch.setattr(module, "train", no_training)
    again = worker_class._load_shared(config)
    assert path.stat().st_mtime_ns == made
    if module is chat:
        assert list(again.generate(["numbers"], 20, seed=2)) == list(first.generate(["numbers"], 20, seed=2))
    else:
        assert np.allclose(again.transform(["numbers"]), first.transform(["numbers"]))


@pytest.mark.parametrize("module, file", [(chat, "text_chat.npz"), (embed, "text_embed.joblib")])
def test_a_missing_or_corrupt_model_file_is_an_error_naming_it(tmp_path, module, file):
    worker_class = module.TextChatWorker if module is chat else module.TextEmbedWorker
    path = tmp_path / file
    with pytest.raises(FileNotFoundError, match=f"model file {path} does not exist"):
        worker_class._load_shared({"MODEL_FILE": str(path), "TRAIN_IF_MISSING": False})
    path.write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match=f"model file {path} cannot be loaded"):
        worker_class._load_shared({"MODEL_FILE": str(path), "TRAIN_IF_MISSING": True})


def test_a_file_of_other_arrays_is_no_chat_model(tmp_path):
    path = tmp_path / "text_chat.npz"
    np.savez(path, vocabulary=np.array(["<p>", "</p>", "word"]), trigrams=np.zeros((1, 4), np.int32),
             bigrams=np.array([[0, 2, 1]], np.int32))  # "word" is never followed, not even by the end
    with pytest.raises(ValueError, match="not those of a trigram model"):
        chat.TextChatWorker._load_shared({"MODEL_FILE": str(path), "TRAIN_IF_MISSING": False})
