"""examples/openai_text through a real gateway and the official ``openai`` client: the trigram chat
model (plain, streamed, async; the same text for the same seed; max_tokens cutting it with
finish_reason "length") and the TF-IDF + SVD embeddings (base64 by default and floats, 64 numbers,
related texts nearer, concurrent requests batched), and the model files made on the first start
and reused on the next."""

from __future__ import annotations

import asyncio
import shutil
import threading

import numpy as np
import openai
import pytest
from conftest import REPO, Gateway

pytestmark = pytest.mark.integration

QUESTION = "How does the for statement iterate over a sequence?"
MODEL_FILES = ("text_chat.npz", "text_embed.joblib")


def example_app(folder):
    app = folder / "openai_text"
    shutil.copytree(REPO / "examples" / "openai_text", app, ignore=shutil.ignore_patterns("_cache", "__pycache__"))
    return app


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gateway = Gateway(example_app(tmp_path_factory.mktemp("openai_text"))).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


@pytest.fixture(scope="module")
def client(gateway):
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def vocabulary(gateway):
    with np.load(gateway.app_dir / "_cache" / "_models" / "text_chat.npz", allow_pickle=False) as arrays:
        return {str(word) for word in arrays["vocabulary"]}


def ask(client, **params):
    return client.chat.completions.create(model="text_chat", messages=[{"role": "user", "content": QUESTION}],
                                          **params)


def streamed(client, **params) -> tuple[list[str], str]:
    pieces, finish = [], None
    for chunk in ask(client, stream=True, **params):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    return pieces, finish


def test_models_lists_the_two_endpoints(client):
    assert sorted(model.id for model in client.models.list()) == ["text_chat", "text_embed"]


def test_a_chat_answer_is_words_of_the_python_help(client, vocabulary):
    answer = ask(client, seed=3, max_tokens=40)
    text = answer.choices[0].message.content
    assert text and answer.choices[0].message.role == "assistant"
    assert set(text.split()) <= vocabulary
    assert ask(client, seed=3, max_tokens=40).choices[0].message.content == text  # the same seed, the same text
    assert len({ask(client, seed=seed, max_tokens=40).choices[0].message.content for seed in range(5)}) > 1


def test_a_streamed_answer_is_the_same_text_word_by_word(client):
    pieces, finish = streamed(client, seed=8, max_tokens=30)
    assert pieces and all(piece.startswith(" ") for piece in pieces[1:])
    assert "".join(pieces) == ask(client, seed=8, max_tokens=30).choices[0].message.content
    assert finish in ("stop", "length")


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client):
    for seed in range(5):
        pieces, finish = streamed(client, seed=seed, max_tokens=5)
        whole = ask(client, seed=seed, max_tokens=100).choices[0].message.content.split()
        assert len(pieces) <= 5 and "".join(pieces).split() == whole[:5]
        assert finish == ("length" if len(whole) > 5 else "stop")
    answer = ask(client, temperature=0, max_completion_tokens=5)
    assert len(answer.choices[0].message.content.split()) == 5 and answer.choices[0].finish_reason == "length"


def test_temperature_zero_needs_no_seed(client):
    texts = {ask(client, temperature=0, max_tokens=20, seed=seed).choices[0].message.content for seed in range(3)}
    assert len(texts) == 1


def test_the_async_client_gets_the_same_answer(gateway, client):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as other:
            return await other.chat.completions.create(
                model="text_chat", messages=[{"role": "user", "content": QUESTION}], seed=11, max_tokens=25)

    answer = asyncio.run(main())
    assert answer.choices[0].message.content == ask(client, seed=11, max_tokens=25).choices[0].message.content


def test_a_bad_parameter_is_a_400(client):
    with pytest.raises(openai.BadRequestError):
        ask(client, temperature=5)


TEXTS = ["Complex numbers have a real part and an imaginary part.",
         "A floating point number has a fractional part and an exponent.",
         "How does a for loop iterate over the items of a list?"]


def test_embeddings_base64_by_default_and_floats(client):
    default = client.embeddings.create(model="text_embed", input=TEXTS)  # the client asks for base64
    floats = client.embeddings.create(model="text_embed", input=TEXTS, encoding_format="float")
    vectors = np.array([item.embedding for item in default.data])
    assert vectors.shape == (3, 64) and [item.index for item in default.data] == [0, 1, 2]
    assert np.allclose(vectors, [item.embedding for item in floats.data], atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    complex_, floating, loop = vectors
    assert complex_ @ floating > complex_ @ loop + 0.3
    one = client.embeddings.create(model="text_embed", input=TEXTS[2], encoding_format="float").data
    assert len(one) == 1 and np.allclose(one[0].embedding, loop, atol=1e-6)


def test_concurrent_embeddings_are_batched_and_each_gets_its_own(gateway, client):
    alone = {text: client.embeddings.create(model="text_embed", input=text, encoding_format="float").data[0].embedding
             for text in TEXTS}
    results, errors = [], []

    def call(text):
        try:
            with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as other:
                results.append((text, other.embeddings.create(model="text_embed", input=text).data[0].embedding))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(TEXTS[i % 3],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(results) == 12
    for text, vector in results:
        assert np.allclose(vector, alone[text], atol=1e-6)


def test_the_model_files_are_made_once_and_reused(tmp_path):
    app = example_app(tmp_path)
    files = [app / "_cache" / "_models" / name for name in MODEL_FILES]
    texts, made = [], []
    for _ in range(2):  # the second start loads the files the first made
        gateway = Gateway(app).start()
        try:
            made.append([path.stat().st_mtime_ns for path in files])
            with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client:
                texts.append(ask(client, seed=1, max_tokens=20).choices[0].message.content)
        finally:
            gateway.stop()
            gateway.assert_nothing_left()
    assert made[0] == made[1] and texts[0] == texts[1]
