"""OpenAI's API in a model server, without processes: what a body is checked for, and how the pieces
become chunks and answers (stop sequences across pieces, max_tokens, usage, embeddings)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from basic_inference_server.errors import Misrouted, ModelError, NotFound, UnknownSignature
from basic_inference_server.openaishape import InvalidParam, error_object
from basic_inference_server.server.openaigen import Finish, Generation, _held_back
from basic_inference_server.server.openaireq import MAX_STOP_CHARS, accept


def chat_body(**params):
    return {"model": "m", "messages": [{"role": "user", "content": "two words"}], **params}


def generation(stream=False, **params):
    return Generation(accept("chat", "m", chat_body(stream=stream, **params)), "rid")


def text_of(chunks):
    return "".join(json.loads(c)["choices"][0]["delta"].get("content", "") for c in chunks
                   if json.loads(c)["choices"])


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": []}, "messages"), ({"messages": [{"content": "x"}]}, "messages[0]"), ({"n": 2}, "n"),
    ({"temperature": 2.5}, "temperature"), ({"top_p": -1}, "top_p"), ({"seed": "x"}, "seed"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"stop": ["a"] * 5}, "stop"), ({"stop": ""}, "stop"), ({"stop": "x" * (MAX_STOP_CHARS + 1)}, "stop"),
    ({"stream": "yes"}, "stream"), ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": 3}, "model"),
])
def test_a_body_openai_refuses_names_the_parameter(body, param):
    with pytest.raises(InvalidParam) as refused:
        accept("chat", "m", {**chat_body(), **body})
    assert refused.value.param == param and refused.value.status == 400
    assert error_object(refused.value)["error"]["param"] == param


def test_the_model_must_be_the_routed_one_and_of_an_openai_endpoint():
    with pytest.raises(Misrouted) as other:
        accept("chat", "m", {**chat_body(), "model": "other"})
    assert other.value.signature == "other"
    with pytest.raises(NotFound):
        accept(None, "m", chat_body())
    assert error_object(UnknownSignature("x"))["error"]["code"] == "model_not_found"


def test_stop_sequences_are_cut_across_pieces_and_never_sent():
    gen = generation(stream=True, stop=["END", "xyz"])
    chunks = gen.take("hello E") + gen.take("N") + gen.take("D more")
    assert text_of(chunks) == "hello " and gen.finish is Finish.STOP
    assert gen.take("ignored") == []  # the text is over
    gen = generation(stream=True, stop="END")
    chunks = gen.take("hello E") + gen.take("X")  # "EX" begins no stop: what was held goes out
    assert text_of(chunks) == "hello EX" and gen.finish is None


@pytest.mark.parametrize(("text", "stop"), [("aab", "abc"), ("xaba", "abab"), ("zzz", "zzzz"), ("q", "ab"),
                                            ("abcab", "abcabd")])
def test_held_back_is_the_longest_end_that_begins_the_stop(text, stop):
    expected = max((k for k in range(1, min(len(stop) - 1, len(text)) + 1) if text.endswith(stop[:k])), default=0)
    assert _held_back(text, stop) == expected


def test_max_tokens_cuts_only_when_another_piece_comes():
    gen = generation(max_tokens=2)
    for piece in ("a", "b"):
        gen.take(piece)
    assert gen.finish is None and gen.full
    gen.take("c")
    answer = json.loads(gen.whole())
    assert answer["choices"][0]["message"]["content"] == "ab" and answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_a_returned_string_gives_its_words_as_pieces():
    gen = generation(max_tokens=3)
    gen.take_plain("one two  three four")
    answer = json.loads(gen.whole())
    assert answer["choices"][0]["message"]["content"] == "one two  three"
    assert answer["choices"][0]["finish_reason"] == "length"


def test_the_closing_chunks_carry_finish_reason_and_usage():
    gen = Generation(accept("chat", "m", chat_body(stream=True, stream_options={"include_usage": True})), "rid")
    first = json.loads(gen.take("hi")[0])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}
    assert first["id"] == "chatcmpl-rid" and first["object"] == "chat.completion.chunk"
    finish, usage = (json.loads(c) for c in gen.closing())
    assert finish["choices"][0]["finish_reason"] == "stop" and usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 1


def test_pieces_of_another_type_are_a_model_error():
    with pytest.raises(ModelError):
        generation().take(3)
    with pytest.raises(ModelError):
        generation().take({"other": 1})
    completions = Generation(accept("completions", "m", {"model": "m", "prompt": "p"}), "rid")
    with pytest.raises(ModelError):
        completions.take({"tool_calls": []})


def test_embeddings_as_floats_and_as_little_endian_float32_base64():
    body = {"model": "m", "input": ["a b", "c"]}
    floats = json.loads(Generation(accept("embeddings", "m", body), "rid").embeddings([[1.5, 2], [3, 4]]))
    assert [d["embedding"] for d in floats["data"]] == [[1.5, 2.0], [3.0, 4.0]]
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    encoded = json.loads(Generation(accept("embeddings", "m", {**body, "encoding_format": "base64"}), "rid"
                                    ).embeddings([[1.5, 2], [3, 4]]))
    assert struct.unpack("<2f", base64.b64decode(encoded["data"][1]["embedding"])) == (3.0, 4.0)
    with pytest.raises(ModelError, match="one vector per input"):
        Generation(accept("embeddings", "m", body), "rid").embeddings([[1.0]])
    with pytest.raises(InvalidParam):
        accept("embeddings", "m", {"model": "m", "input": [1, 2]})
