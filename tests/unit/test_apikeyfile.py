"""The API keys file, read without a gateway: a NAME or a key listed twice is refused (jobs belong to
a key by its NAME), and a key of RPS under 1 still gets its request now and then."""

from __future__ import annotations

import json

import pytest

from basic_inference_server.apikeyfile import hash_of, parse
from basic_inference_server.gateway.apikeys import ApiKeys


def entry(name: str, key: str, **limits: float) -> dict:
    return {"NAME": name, "SHA256": hash_of(key), **limits}


@pytest.mark.parametrize(("entries", "words"), [
    ([entry("a", "k1"), entry("a", "k2")], "NAME 'a' is listed twice"),
    ([entry("a", "k1"), entry("b", "k1")], "its SHA256 is listed twice"),
    ([entry("a", "k1", BURST=0.5)], "BURST: expected at least 1"),
])
def test_a_file_that_would_mix_up_keys_is_refused(entries, words):
    with pytest.raises(ValueError, match=words):
        parse({"KEYS": entries}, "keys.json")


def test_a_key_under_one_request_per_second_gets_one_then_waits(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"KEYS": [entry("slow", "k", RPS=0.5)]}))
    keys = ApiKeys(str(path))
    keys.done(keys.admit(None, b"k", "echo"))  # its bucket holds one request
    with pytest.raises(Exception, match="over its RPS") as limited:
        keys.admit(None, b"k", "echo")
    assert limited.value.status == 429 and limited.value.retry_after == 2
