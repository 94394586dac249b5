"""API keys on OpenAI's API, through a real gateway and the official ``openai`` client: its own
exception classes for 401, 403 and 429 (with Retry-After), the key in either header, and
/v1/models listing the models the key may call."""

from __future__ import annotations

import json

import openai
import pytest
from conftest import FIXTURES, Gateway, make_app

from basic_inference_server.apikeyfile import hash_of

pytestmark = pytest.mark.integration

KEYS = {"all": "bis_key-openai-all-0001", "embed_only": "bis_key-openai-embed-0002",
        "slow": "bis_key-openai-slow-0003"}
ENTRIES = [
    {"NAME": "all", "SHA256": hash_of(KEYS["all"]), "ENDPOINTS": ["*"]},
    {"NAME": "embed_only", "SHA256": hash_of(KEYS["embed_only"]), "ENDPOINTS": ["embed"]},
    {"NAME": "slow", "SHA256": hash_of(KEYS["slow"]), "RPS": 0.2, "BURST": 1},
]
ENTRY = {"SERVER_CLASS": "openai_model", "NR_WORKERS": 1}
CONFIG = {"SERVER_NAME": "openai_keys", "SHUTDOWN_GRACE": 5, "CONFIG_ENDPOINTS": {
    "chat": {**ENTRY, "OPENAI": "chat"}, "embed": {**ENTRY, "OPENAI": "embeddings"}}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openai_keys")
    keys_file = folder / "api_keys.json"
    keys_file.write_text(json.dumps({"KEYS": ENTRIES}))
    gateway = Gateway(make_app(folder, CONFIG, [FIXTURES / "endpoints" / "openai_model.py"]),
                      env={"BIS_API_KEYS_FILE": str(keys_file)}).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


def client_of(gateway, key, **kwargs):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=10, **kwargs)


def ask(client, model="chat"):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "echo ok"}])


def test_the_sdk_raises_its_own_classes_for_401_403_429(gateway):
    with pytest.raises(openai.AuthenticationError) as unknown:
        ask(client_of(gateway, "bis_not-a-key"))
    assert unknown.value.code == "invalid_api_key" and "bis_not-a-key" not in unknown.value.message
    assert ask(client_of(gateway, KEYS["all"])).choices[0].message.content == " ok"
    with pytest.raises(openai.PermissionDeniedError):
        ask(client_of(gateway, KEYS["embed_only"]))
    embedded = client_of(gateway, KEYS["embed_only"]).embeddings.create(model="embed", input="a b")
    assert embedded.data[0].embedding == [3.0, 2.0, 0.5]
    slow = client_of(gateway, KEYS["slow"])
    assert ask(slow).choices[0].finish_reason == "stop"  # its burst of one
    with pytest.raises(openai.RateLimitError) as limited:
        ask(slow)
    assert int(limited.value.response.headers["Retry-After"]) >= 1


def test_the_key_may_come_as_x_api_key_and_models_lists_what_it_may_call(gateway):
    header_only = client_of(gateway, "ignored", default_headers={"Authorization": "", "X-API-Key": KEYS["all"]})
    assert ask(header_only).choices[0].message.content == " ok"
    assert [m.id for m in client_of(gateway, KEYS["all"]).models.list()] == ["chat", "embed"]
    assert [m.id for m in client_of(gateway, KEYS["embed_only"]).models.list()] == ["embed"]
    with pytest.raises(openai.AuthenticationError):
        client_of(gateway, "bis_not-a-key").models.list()
    with pytest.raises(openai.NotFoundError):
        client_of(gateway, KEYS["embed_only"]).models.retrieve("chat")
