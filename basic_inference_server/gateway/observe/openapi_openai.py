"""OpenAI's API (``/v1``) in the gateway's OpenAPI description (:mod:`.openapi`).

Its errors are OpenAI's error object (``OpenAIError``), except what the HTTP front refuses before
routing (a body over MAX_BODY_MB), which has the gateway's ``Error`` shape. The schemas hold what
the gateway answers and checks; the requests allow every other parameter (the hooks get them).
"""

from __future__ import annotations

from typing import Any

from ...transport.streamformat import SSE_TYPE
from .openapi_build import JSON, Schema, _answer, _int, _nullable, _obj, _operation, _retry_after, _schema, _str

TAG = "openai"
_NUMBER = {"type": "number"}
_MODEL = _str("an endpoint whose entry has \"OPENAI\" of this route's kind (GET /v1/models lists them)")


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _answer(description, _schema("OpenAIError"), headers=headers)


def _list(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def openai_schemas() -> dict[str, Schema]:
    usage = _obj({"prompt_tokens": _int(), "completion_tokens": _int(), "total_tokens": _int()},
                 ["prompt_tokens", "total_tokens"])
    head = {"id": _str(), "object": _str(), "created": _int(), "model": _str()}
    finish = _nullable(_str(enum=["stop", "length", "tool_calls"]))
    message = _obj({"role": _str(), "content": _nullable(_str()), "tool_calls": _list(_obj())}, ["role"])
    generation = {"max_tokens": _int(minimum=1), "max_completion_tokens": _int(minimum=1),
                  "temperature": {**_NUMBER, "minimum": 0, "maximum": 2}, "top_p": {**_NUMBER, "minimum": 0,
                                                                                     "maximum": 1},
                  "seed": _int(), "n": _int(minimum=1, maximum=1), "stream": {"type": "boolean"},
                  "stream_options": _obj({"include_usage": {"type": "boolean"}}),
                  "stop": {"oneOf": [_str(minLength=1), _list(_str(minLength=1), maxItems=4)]}}
    return {
        "OpenAIError": _obj({"error": _obj({"message": _str(), "type": _str(), "param": _nullable(_str()),
                                            "code": _nullable(_str())}, ["message", "type", "param", "code"])},
                            ["error"]),
        "OpenAIModel": _obj({"id": _str(), "object": _str(enum=["model"]), "created": _int(), "owned_by": _str()},
                            ["id", "object", "created", "owned_by"]),
        "OpenAIUsage": usage,
        "ChatCompletionRequest": _obj({"model": _MODEL, "messages": _list(
            _obj({"role": _str(), "content": {}}, ["role"]), minItems=1), **generation}, ["model", "messages"]),
        "ChatCompletion": _obj({**head, "choices": _list(_obj(
            {"index": _int(), "message": message, "finish_reason": finish}, ["index", "message", "finish_reason"])),
            "usage": _schema("OpenAIUsage")}, ["id", "object", "created", "model", "choices", "usage"]),
        "CompletionRequest": _obj({"model": _MODEL, "prompt": {"oneOf": [_str(), _list(_str(), minItems=1,
                                                                                        maxItems=1)]},
                                   **generation}, ["model", "prompt"]),
        "Completion": _obj({**head, "choices": _list(_obj(
            {"index": _int(), "text": _str(), "finish_reason": finish}, ["index", "text", "finish_reason"])),
            "usage": _schema("OpenAIUsage")}, ["id", "object", "created", "model", "choices"]),
        "EmbeddingRequest": _obj({"model": _MODEL, "input": {"oneOf": [_str(), _list(_str(), minItems=1)]},
                                  "encoding_format": _str(enum=["float", "base64"])}, ["model", "input"]),
        "EmbeddingList": _obj({"object": _str(enum=["list"]), "model": _str(), "data": _list(_obj(
            {"object": _str(enum=["embedding"]), "index": _int(),
             "embedding": {"oneOf": [_list(_NUMBER), _str("base64 of little-endian float32")]}},
            ["object", "index", "embedding"])), "usage": _schema("OpenAIUsage")}, ["object", "model", "data"]),
    }


def _post(operation_id: str, summary: str, request: str, answer: str, streams: bool) -> dict[str, Any]:
    ok = _answer(f"the {answer}", _schema(answer))
    if streams:
        ok["content"][SSE_TYPE] = {"schema": _str(
            "with \"stream\": true: Server-Sent Events, `data: <chunk JSON>` per piece, a chunk with "
            "finish_reason (and one with usage, with stream_options.include_usage), then `data: [DONE]`")}
    return {"post": _operation(operation_id, summary, TAG, {
        "200": ok,
        "400": _error("a body that is not JSON, or a parameter OpenAI's API does not allow (named in param)"),
        "401": _error("API keys are on (BIS_API_KEYS_FILE) and no valid key was sent"),
        "403": _error("the API key may not call this model"),
        "404": _error("an unknown model, or one that does not serve this route"),
        "413": "PayloadTooLarge",
        "429": _error("over the API key's RPS or CONCURRENCY", _retry_after()),
        "4XX": _error("a worker hook raised InputError with this status, or _pre_process raised (400)"),
        "500": _error("a hook raised, or returned no answer of its kind"),
        "501": _error("the model is served by remote model servers (URLS), which take /run only"),
        "502": _error("the model server died or closed the connection while serving"),
        "503": _error("the model is starting, restarting or failed, or overloaded", _retry_after()),
        "504": _error("the request did not finish within REQUEST_TIMEOUT")},
        body={"required": True, "content": {JSON: {"schema": _schema(request)}}},
        description="OpenAI's API for the endpoints whose entry has \"OPENAI\": the body reaches _pre_process as a "
                    "dict; see the OpenAI API page of the docs for the hook contract.")}


def openai_paths() -> dict[str, Any]:
    model = {"name": "model", "in": "path", "required": True, "description": "an endpoint's name", "schema": _str()}
    keys = {"401": _error("API keys are on and no valid key was sent"),
            "429": _error("over the API key's RPS or CONCURRENCY", _retry_after())}
    return {
        "/v1/models": {"get": _operation("openaiModels", "The models of OpenAI's API", TAG, {
            "200": _answer("the endpoints with \"OPENAI\" (with API keys: those the key may call)", _obj(
                {"object": _str(enum=["list"]), "data": _list(_schema("OpenAIModel"))}, ["object", "data"])),
            **keys})},
        "/v1/models/{model}": {"get": _operation("openaiModel", "A model of OpenAI's API", TAG, {
            "200": _answer("the model", _schema("OpenAIModel")),
            "404": _error("no such model (or not one of OpenAI's API)"), **keys}, parameters=[model])},
        "/v1/chat/completions": _post("openaiChatCompletions", "A chat completion", "ChatCompletionRequest",
                                      "ChatCompletion", True),
        "/v1/completions": _post("openaiCompletions", "A text completion", "CompletionRequest", "Completion", True),
        "/v1/embeddings": _post("openaiEmbeddings", "Embeddings of texts", "EmbeddingRequest", "EmbeddingList",
                                False),
    }
