"""OpenAI's API through a real gateway, with the official ``openai`` client: models, chat and
completions (plain, streamed, async), max_tokens and stop honoured, usage, tool calls passed
through, embeddings (base64 by default, and floats), batching, errors in OpenAI's shape with their
real status (so the SDK raises its own classes), a client that leaves cancelling its stream, and
/run left as it was on the same endpoint."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import openai
import pytest
import requests
from conftest import FIXTURES, Gateway, make_app

pytestmark = pytest.mark.integration

ENTRY = {"SERVER_CLASS": "openai_model", "NR_WORKERS": 2, "REQUEST_TIMEOUT": 5}
CONFIG = {
    "SERVER_NAME": "openai",
    "MAX_BODY_MB": 0.25,
    "SHUTDOWN_GRACE": 5,
    "CONFIG_ENDPOINTS": {
        "chat": {**ENTRY, "OPENAI": "chat"},
        "chat_single": {**ENTRY, "OPENAI": "chat", "NR_WORKERS": 1},
        "chat_tight": {**ENTRY, "OPENAI": "chat", "NR_WORKERS": 1, "MAX_QUEUE": 1},
        "chat_batched": {**ENTRY, "OPENAI": "chat", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 4, "MAX_BATCH_WAIT_MS": 50},
        "complete": {**ENTRY, "OPENAI": "completions"},
        "embed": {**ENTRY, "OPENAI": "embeddings"},
        "embed_batched": {**ENTRY, "OPENAI": "embeddings", "MAX_BATCH_SIZE": 8, "MAX_BATCH_WAIT_MS": 50},
        "echo": {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1},
    },
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openai")
    files = [FIXTURES / "endpoints" / name for name in ("openai_model.py", "echo_model.py")]
    gateway = Gateway(make_app(folder, CONFIG, files)).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


@pytest.fixture(scope="module")
def client(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=10) as client:
        yield client


def chat(client, content, model="chat", **params):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **params)


def test_models_lists_the_openai_endpoints_only(gateway, client):
    assert [m.id for m in client.models.list()] == ["chat", "chat_batched", "chat_single", "chat_tight", "complete",
                                                    "embed", "embed_batched"]
    assert client.models.retrieve("embed").owned_by == "basic_inference_server"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("echo")
    servers = gateway.servers()
    assert (servers["embed"]["OPENAI"], servers["chat"]["OPENAI"], servers["echo"]["OPENAI"]) == (
        "embeddings", "chat", None)  # /list_servers says which


def test_chat_plain_answer_and_usage(client):
    answer = chat(client, "echo hello there world")
    assert answer.object == "chat.completion" and answer.model == "chat"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == " hello there world"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (4, 3, 7)


def test_chat_streams_chunks_with_usage_at_the_end(client):
    chunks = list(chat(client, "echo a b c", stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].delta.content for c in chunks[:3]] == [" a", " b", " c"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[3].choices[0].finish_reason == "stop"
    assert chunks[4].choices == [] and chunks[4].usage.completion_tokens == 3
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"


def test_max_tokens_cuts_the_text_and_closes_the_generator(client, tmp_path):
    mark = tmp_path / "closed"
    answer = chat(client, "count 50", max_tokens=5, user=str(mark))
    assert answer.choices[0].message.content == "t0 t1 t2 t3 t4 "
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 5
    assert mark.read_text() == "closed"
    exact = chat(client, "echo a b", max_completion_tokens=2)  # as many pieces as allowed: not cut
    assert exact.choices[0].finish_reason == "stop"
    chunks = list(chat(client, "count 50", max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "t0 t1 t2 "
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_sequences_are_never_sent_even_across_pieces(client):
    answer = chat(client, "count 50", stop=["t3"])
    assert answer.choices[0].message.content == "t0 t1 t2 " and answer.choices[0].finish_reason == "stop"
    streamed = list(chat(client, "echo one two three four", stop=" thr", stream=True))  # " two" then " three"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == " one two"
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_parameters_reach_the_hooks(client):
    answer = chat(client, "params", temperature=0.3, top_p=0.9, seed=42, stop=["\n\n"], max_tokens=100)
    assert json.loads(answer.choices[0].message.content) == {"temperature": 0.3, "top_p": 0.9, "seed": 42,
                                                             "max_tokens": 100, "stop": ["\n\n"]}


def test_a_returned_string_counts_its_words_and_is_cut_by_max_tokens(client):
    answer = chat(client, "say the quick brown fox", max_tokens=2)
    assert answer.choices[0].message.content == "the quick" and answer.choices[0].finish_reason == "length"


def test_tool_calls_and_the_hooks_usage_pass_through(client):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    answer = chat(client, "tool", tools=tools)
    call = answer.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "weather",
                                                                                  {"city": "Paris"})
    assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
    streamed = list(chat(client, "tool", tools=tools, stream=True))
    assert streamed[0].choices[0].delta.tool_calls[0].function.name == "weather"
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    usage = chat(client, "usage").usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 3, 10)


def test_completions(client):
    answer = client.completions.create(model="complete", prompt="echo x y")
    assert answer.object == "text_completion" and answer.choices[0].text == " x y"
    streamed = list(client.completions.create(model="complete", prompt="count 3", stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "t0 t1 t2 "
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_async_client_streams_side_by_side(gateway):
    async def main():
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
            async def one(n):
                stream = await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": f"count {n} 20"}], stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream])
            return await asyncio.gather(one(3), one(4))
    started = time.monotonic()
    assert asyncio.run(main()) == ["t0 t1 t2 ", "t0 t1 t2 t3 "]
    assert time.monotonic() - started < 2


def test_embeddings_base64_by_default_and_floats(client):
    default = client.embeddings.create(model="embed", input=["one two", "three"])  # the SDK asks for base64
    assert [d.embedding for d in default.data] == [[7.0, 2.0, 0.5], [5.0, 1.0, 0.5]]
    assert default.usage.prompt_tokens == 3
    floats = client.embeddings.create(model="embed", input="abc", encoding_format="float")
    assert floats.data[0].embedding == [3.0, 1.0, 0.5] and floats.model == "embed"


def test_batching_serves_generation_and_embeddings(gateway, client):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as other:
        async def side_by_side():
            loop = asyncio.get_running_loop()
            calls = [loop.run_in_executor(None, lambda n=n: chat(other, f"echo w{n} v{n}", model="chat_batched"))
                     for n in range(4)]
            calls += [loop.run_in_executor(None, lambda n=n: client.embeddings.create(
                model="embed_batched", input=["x" * n])) for n in range(1, 5)]
            return await asyncio.gather(*calls)
        results = asyncio.run(side_by_side())
    assert [r.choices[0].message.content for r in results[:4]] == [f" w{n} v{n}" for n in range(4)]
    assert [r.data[0].embedding[0] for r in results[4:]] == [1.0, 2.0, 3.0, 4.0]
    streamed = list(chat(client, "echo p q", model="chat_batched", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == " p q"


def test_errors_are_openai_shaped_with_their_status(gateway, client):
    with pytest.raises(openai.NotFoundError) as unknown:
        chat(client, "echo a", model="no_such_model")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError, match="/v1/embeddings"):
        chat(client, "echo a", model="embed")  # an endpoint of another kind
    with pytest.raises(openai.NotFoundError):
        chat(client, "echo a", model="echo")  # no OPENAI
    with pytest.raises(openai.BadRequestError) as bad:
        chat(client, "echo a", n=2)
    assert bad.value.param == "n" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=[])
    with pytest.raises(openai.BadRequestError):
        chat(client, "echo a", temperature=5)
    with pytest.raises(openai.InternalServerError, match="the model broke"):
        chat(client, "fail")
    raw = gateway.session.post(gateway.url + "/v1/chat/completions", data=b"{not json", timeout=5)
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    wrong = gateway.session.get(gateway.url + "/v1/chat/completions", timeout=5)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST" and "error" in wrong.json()
    assert gateway.session.get(gateway.url + "/v1/nothing", timeout=5).json()["error"]["type"] == "not_found_error"


def test_an_error_after_pieces_ends_the_stream_with_an_error_event(gateway):
    body = {"model": "chat", "messages": [{"role": "user", "content": "fail"}], "stream": True}
    response = gateway.session.post(gateway.url + "/v1/chat/completions", json=body, timeout=5)
    events = [line for line in response.text.split("\n\n") if line]
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == " x"
    assert "the model broke" in json.loads(events[1][6:])["error"]["message"]
    assert events[-1] == "data: [DONE]"


def test_a_client_that_leaves_frees_the_worker(gateway, client, tmp_path):
    mark = tmp_path / "closed"
    body = json.dumps({"model": "chat_single", "messages": [{"role": "user", "content": "count 10000 10"}],
                       "stream": True, "user": str(mark)}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b"t0 " in sock.recv(65536)
    deadline = time.monotonic() + 5
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.read_text() == "closed"  # the generator was closed at its next piece
    assert chat(client, "echo free", model="chat_single").choices[0].message.content == " free"  # its one worker


def test_a_full_model_is_a_503_with_retry_after(gateway, client):
    body = json.dumps({"model": "chat_tight", "messages": [{"role": "user", "content": "count 300 10"}],
                       "stream": True}).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    held = []
    try:
        for _ in range(2):  # its one worker streams the first; the second waits in its queue of one
            held.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=5))
            held[-1].sendall(request)
            if len(held) == 1:
                assert held[0].recv(100).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while gateway.servers()["chat_tight"]["WORKERS"]["queue"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(openai.InternalServerError) as full:
            chat(client, "echo a", model="chat_tight")
        assert full.value.status_code == 503 and int(full.value.response.headers["Retry-After"]) >= 1
        assert full.value.body["type"] == "server_error" and full.value.code == "overloaded"
    finally:
        for sock in held:
            sock.close()


def test_run_still_serves_the_same_endpoint(gateway):
    body = {"SIGNATURE": "chat", "messages": [{"role": "user", "content": "echo a b"}]}
    answer = gateway.session.post(gateway.url + "/run", json=body, timeout=5)
    assert answer.status_code == 200 and answer.json()["predict_result"] == [" a", " b"]
    raw = requests.post(gateway.url + "/v1/embeddings", json={"model": "embed", "input": 3}, timeout=5)
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "input"
