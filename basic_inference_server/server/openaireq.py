"""A request of OpenAI's API read in a model server: its body checked the way OpenAI checks it,
before any hook runs (:func:`accept`).

The worker's ``_pre_process`` receives the body as a dict, as the client sent it: ``messages``
(chat), ``prompt`` (completions) or ``input`` (embeddings), and every parameter (``max_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``, ``tools``...). The server itself honours
``max_tokens`` / ``max_completion_tokens``, ``stop``, ``stream`` and ``stream_options``
(:mod:`.openaigen`); the others are the hooks' to use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import Misrouted
from ..openaishape import KINDS, InvalidParam, wrong_route

MAX_STOPS = 4
MAX_STOP_CHARS = 1024  # a stop sequence is looked for at every piece: its length bounds what that costs


@dataclass(frozen=True)
class OpenAIRequest:
    """What the answer of one request needs from its body."""

    kind: str  # chat, completions or embeddings
    model: str
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    max_tokens: int | None = None
    stops: tuple[str, ...] = ()
    prompt_tokens: int = 0  # the prompt's words (the hook may report its own count)
    inputs: int = 0  # embeddings: how many inputs (one vector each)
    base64: bool = False  # embeddings: encoding_format "base64"


def accept(kind: str | None, routed: str, body: Mapping[str, Any]) -> OpenAIRequest:
    """The request a body makes for an endpoint of ``kind`` (its ``OPENAI``) routed as ``routed``:
    InvalidParam (400) naming the parameter that is wrong, Misrouted when ``model`` names another
    endpoint (the gateway routes it again), NotFound when this endpoint is of another kind."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParam("model", "'model' is required: the name of an endpoint (GET /v1/models lists them)")
    if routed and model != routed:
        raise Misrouted(f"the body names model {model!r}, not {routed!r}", signature=model)
    if kind not in KINDS:
        raise wrong_route(None, model, "")
    if kind == "embeddings":
        return _embeddings(model, body)
    if kind == "chat":
        prompt_tokens = _messages(body.get("messages"))
    else:
        prompt_tokens = _prompt(body.get("prompt"))
    n = body.get("n", 1)
    if n not in (None, 1) or isinstance(n, bool):
        raise InvalidParam("n", f"only n=1 is served, got {n!r}")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, Mapping) or not stream):
        raise InvalidParam("stream_options", "stream_options is an object, and only with \"stream\": true")
    _numbers(body)
    return OpenAIRequest(kind, model, stream, bool(options and _flag(options, "include_usage")), _max_tokens(body),
                         _stops(body.get("stop")), prompt_tokens)


def _embeddings(model: str, body: Mapping[str, Any]) -> OpenAIRequest:
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidParam("input", "'input' must be a string or a non-empty list of strings (token arrays are "
                                    "not served)")
    encoding = body.get("encoding_format", "float")
    if encoding not in (None, "float", "base64"):
        raise InvalidParam("encoding_format", f"encoding_format must be \"float\" or \"base64\", got {encoding!r}")
    return OpenAIRequest("embeddings", model, prompt_tokens=sum(_words(t) for t in texts), inputs=len(texts),
                         base64=encoding == "base64")


def _messages(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise InvalidParam("messages", "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    words = 0
    for number, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidParam(f"messages[{number}]", f"messages[{number}] must be an object with a \"role\"")
        content = message.get("content")
        if isinstance(content, str):
            words += _words(content)
        elif isinstance(content, list):  # content parts: the text ones count
            words += sum(_words(part.get("text", "")) for part in content
                         if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return words


def _prompt(prompt: Any) -> int:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidParam("prompt", "'prompt' must be a string (one prompt per request)")
    return _words(prompt)


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidParam(name, f"{name!r} must be true or false, got {value!r}")
    return value


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    limit = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParam(name, f"{name!r} must be a positive integer, got {value!r}")
        limit = value if limit is None else min(limit, value)
    return limit


def _numbers(body: Mapping[str, Any]) -> None:
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            raise InvalidParam(name, f"{name!r} must be a number from {low} to {high}, got {value!r}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidParam("seed", f"'seed' must be an integer, got {seed!r}")


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return ()
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise InvalidParam("stop", f"'stop' must be a string or a list of up to {MAX_STOPS} strings of 1 to "
                                   f"{MAX_STOP_CHARS} characters")
    return tuple(stops)


def _words(text: str) -> int:
    return len(text.split())

