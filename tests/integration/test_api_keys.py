"""API keys (BIS_API_KEYS_FILE) through a real gateway: 401 without a valid key, 403 for an
endpoint the key may not call, 429 with Retry-After past its RPS or CONCURRENCY, both header
forms, V2's error shape, the probes and /metrics unguarded, metrics by key name (never the key),
`bis keys add` and a reload without a restart; nothing changes without the file."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from conftest import ECHO_CONFIG, Gateway, make_app

from basic_inference_server.apikeyfile import hash_of
from basic_inference_server.client import Client, Unauthorized
from basic_inference_server.client.cli import main as bis

pytestmark = pytest.mark.integration

KEYS = {"all": "bis_key-for-everything-0001", "echo_only": "bis_key-for-echo-only-0002",
        "slow": "bis_key-two-per-second-0003", "single": "bis_key-one-at-a-time-0004"}
ENTRIES = [
    {"NAME": "all", "SHA256": hash_of(KEYS["all"]), "ENDPOINTS": ["*"]},
    {"NAME": "echo_only", "SHA256": hash_of(KEYS["echo_only"]), "ENDPOINTS": ["echo"]},
    {"NAME": "slow", "SHA256": hash_of(KEYS["slow"]), "RPS": 0.5, "BURST": 2},
    {"NAME": "single", "SHA256": hash_of(KEYS["single"]), "CONCURRENCY": 1},
]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    keys_file = folder / "api_keys.json"
    keys_file.write_text(json.dumps({"KEYS": ENTRIES}))
    config = {**ECHO_CONFIG, "ALLOW_CLIENT_SHM": True}
    gateway = Gateway(make_app(folder, config), env={"BIS_API_KEYS_FILE": str(keys_file)}).start()
    gateway.keys_file = keys_file
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


def run(gateway: Gateway, key: str | None = None, header: str = "Authorization", signature: str = "echo",
        **inputs) -> requests.Response:
    headers = {} if key is None else {header: f"Bearer {key}" if header == "Authorization" else key}
    return gateway.session.post(gateway.url + "/run", json={"SIGNATURE": signature, "VALUE": 1, **inputs},
                                headers=headers, timeout=10)


def test_a_valid_key_is_needed_in_either_header(keyed):
    assert run(keyed).status_code == 401
    refused = run(keyed, "bis_not-a-key")
    assert refused.status_code == 401 and "API key" in refused.json()["ERROR"]
    assert run(keyed, KEYS["all"]).status_code == 200
    assert run(keyed, KEYS["all"], header="X-API-Key").status_code == 200
    v2 = keyed.session.post(keyed.url + "/v2/models/echo/infer", json={"inputs": []}, timeout=10)
    assert v2.status_code == 401 and "API key" in v2.json()["error"]  # the protocol's error shape


def test_a_key_calls_only_its_endpoints(keyed):
    assert run(keyed, KEYS["echo_only"]).status_code == 200
    forbidden = run(keyed, KEYS["echo_only"], signature="echo_b")
    assert forbidden.status_code == 403 and "echo_b" in forbidden.json()["ERROR"]


def test_past_its_rps_or_its_concurrency_a_key_gets_429_with_retry_after(keyed):
    statuses = [run(keyed, KEYS["slow"]).status_code for _ in range(3)]
    assert statuses[:2] == [200, 200] and statuses[2] == 429  # a burst of 2, then 0.5 per second
    limited = run(keyed, KEYS["slow"])
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    holder = threading.Thread(target=lambda: run(keyed, KEYS["single"], SLEEP=1))
    holder.start()
    time.sleep(0.3)
    busy = run(keyed, KEYS["single"])
    holder.join(10)
    assert busy.status_code == 429 and "CONCURRENCY" in busy.json()["ERROR"]
    assert run(keyed, KEYS["single"]).status_code == 200  # its place came back
    assert run(keyed, KEYS["all"]).status_code == 200  # the other keys are not slowed


def test_probes_and_metrics_need_no_key_and_metrics_count_by_name(keyed):
    for path in ("/health", "/ready", "/v2/health/live", "/v2/health/ready"):
        assert keyed.get(path).status_code == 200, path
    run(keyed, KEYS["all"])
    metrics = keyed.get("/metrics").text
    assert 'bis_api_key_requests_total{key="all",outcome="admitted"}' in metrics
    output = keyed.output() + metrics
    assert not any(key in output for key in KEYS.values())  # never logged nor shown


def test_bis_keys_add_and_a_reload_put_a_new_key_in_force_without_a_restart(keyed, capsys):
    assert bis(["keys", "add", "newcomer", "--file", str(keyed.keys_file), "--endpoints", "echo"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("bis_") and hash_of(key) in keyed.keys_file.read_text()
    assert key not in keyed.keys_file.read_text()  # only its hash is kept
    assert run(keyed, key).status_code == 401  # not in force before the reload
    assert keyed.admin("/reload_config", {}).status_code == 200
    assert run(keyed, key).status_code == 200 and run(keyed, key, signature="echo_b").status_code == 403
    assert bis(["keys", "add", "newcomer", "--file", str(keyed.keys_file)]) == 2  # a name is used once


def test_notifications_and_shared_memory_routes_take_a_key_or_the_admin_token(keyed):
    def notes(key: str | None = None, signature: str = "echo", **headers: str) -> requests.Response:
        given = {"X-API-Key": key} if key else {}
        return keyed.session.post(keyed.url + "/notifications", json={"SIGNATURE": signature},
                                  headers={**given, **headers}, timeout=10)

    assert notes().status_code == 401
    assert notes(KEYS["echo_only"]).status_code == 200
    assert notes(KEYS["echo_only"], "echo_b").status_code == 403
    assert notes(Authorization=f"Bearer {keyed.token}").status_code == 200  # the admin token, as before
    assert keyed.get("/v2/systemsharedmemory/status").status_code == 401
    assert keyed.get("/v2/systemsharedmemory/status", headers={"X-API-Key": KEYS["echo_only"]}).json() == []


def test_a_keys_file_that_does_not_read_is_answered_by_the_reload_and_the_keys_stay(keyed):
    good = keyed.keys_file.read_text()
    keyed.keys_file.write_text(json.dumps({"KEYS": [ENTRIES[0], {**ENTRIES[1], "NAME": "all"}]}))
    try:
        answer = keyed.admin("/reload_config", {})
        assert answer.status_code == 200 and "'all' is listed twice" in answer.json()["API_KEYS_ERROR"]
        assert run(keyed, KEYS["echo_only"]).status_code == 200  # the keys in force stay
    finally:
        keyed.keys_file.write_text(good)
        assert "API_KEYS_ERROR" not in keyed.admin("/reload_config", {}).json()


def test_v2_metadata_and_readiness_take_a_key_allowed_that_model(keyed):
    echo_only = {"X-API-Key": KEYS["echo_only"]}
    for path in ("/v2", "/v2/models/echo", "/v2/models/echo/ready"):
        refused = keyed.get(path)
        assert refused.status_code == 401 and "API key" in refused.json()["error"], path
        assert keyed.get(path, headers=echo_only).status_code == 200, path
    assert keyed.get("/v2/models/echo_b", headers=echo_only).status_code == 403


def test_the_python_client_and_bis_send_their_api_key(keyed, capsys):
    with Client(keyed.url, api_key=KEYS["echo_only"]) as client:
        assert client.run("echo", VALUE=2)["predict_result"]
        with pytest.raises(Unauthorized, match="may not call"):
            client.run("echo_b", VALUE=2)
    with Client(keyed.url) as client, pytest.raises(Unauthorized):
        client.run("echo", VALUE=2)
    assert bis(["--url", keyed.url, "--api-key", KEYS["echo_only"], "run", "echo", "VALUE=1"]) == 0
    assert bis(["--url", keyed.url, "run", "echo", "VALUE=1"]) != 0
    assert KEYS["echo_only"] not in capsys.readouterr().err


def test_without_a_keys_file_the_headers_are_ignored(echo_gateway):
    assert run(echo_gateway).status_code == 200
    assert run(echo_gateway, "bis_whatever").status_code == 200


def test_a_request_in_flight_across_a_reload_gives_its_place_back(keyed):
    holder = threading.Thread(target=lambda: run(keyed, KEYS["single"], SLEEP=1))
    holder.start()
    time.sleep(0.3)
    assert keyed.admin("/reload_config", {}).status_code == 200  # the key is read again while it holds its place
    assert run(keyed, KEYS["single"]).status_code == 429
    holder.join(10)
    assert run(keyed, KEYS["single"]).status_code == 200  # its one place came back to the key in force
