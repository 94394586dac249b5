"""Every bad request gets its status and one JSON shape, and the system keeps serving."""

from __future__ import annotations

import http.client
import json

import pytest
import requests


def assert_error(reply, status: int, error_type: str | None = None, contains: str | None = None) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert isinstance(body["ERROR"], str) and body["ERROR"]
    assert body["error"]["message"] == body["ERROR"]
    if error_type:
        assert body["error"]["type"] == error_type
    if contains:
        assert contains in body["ERROR"]
    return body


def assert_still_serving(gateway) -> None:
    """Both endpoints answer and no worker stayed busy (asked of each server now, not a cached probe)."""
    for name, value in (("echo", "ok-a"), ("echo_b", "ok-b")):
        reply = gateway.run(name, VALUE=value)
        assert reply.status_code == 200, reply.text
        assert reply.json()["predict_result"]["echo"] == value
    servers = gateway.servers()
    for name in ("echo", "echo_b"):
        health = requests.get(f"http://127.0.0.1:{servers[name]['PORT']}/health", timeout=5).json()
        assert health["workers"]["busy"] == 0, health


@pytest.mark.parametrize(
    "payload, status, error_type",
    [
        ({"VALUE": 1}, 400, "BadRequest"),  # missing SIGNATURE
        ({"SIGNATURE": 5, "VALUE": 1}, 400, "BadRequest"),
        ({"SIGNATURE": ["echo"], "VALUE": 1}, 400, "BadRequest"),
        ({"SIGNATURE": "nope", "VALUE": 1}, 404, "UnknownSignature"),
        ({"SIGNATURE": "echo_off", "VALUE": 1}, 404, "SignatureDisabled"),
        ({"SIGNATURE": "helper", "VALUE": 1}, 404, "UnknownSignature"),  # a support process
        ({"SIGNATURE": "../echo", "VALUE": 1}, 404, "UnknownSignature"),
        ({"SIGNATURE": "/etc/passwd", "VALUE": 1}, 404, "UnknownSignature"),
        ({"SIGNATURE": "echo\u0000", "VALUE": 1}, 404, "UnknownSignature"),
        ({"SIGNATURE": "echo_model", "VALUE": 1}, 404, "UnknownSignature"),  # a file name, not an endpoint
    ],
)
def test_bad_signatures(echo_gateway, payload, status, error_type):
    assert_error(echo_gateway.post("/run", payload), status, error_type)
    assert_still_serving(echo_gateway)


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"", b"[1, 2, 3]", b'"echo"', b"null", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000,
     b'{"SIGNATURE": "echo", "VALUE": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"],
    ids=["malformed", "empty", "list", "string", "null", "not-utf8", "deep-list", "deep-in-object"],
)
def test_bad_bodies_are_400(echo_gateway, data):
    assert_error(echo_gateway.post("/run", data=data, headers={"Content-Type": "application/json"}), 400,
                 "BadRequest")
    assert_still_serving(echo_gateway)


def test_body_over_limit_is_413_naming_the_setting_with_the_request_id(echo_gateway):
    big = json.dumps({"SIGNATURE": "echo", "VALUE": "x" * 300_000}).encode()  # limit is 0.25 MB
    reply = echo_gateway.post("/run", data=big, headers={"X-Request-ID": "my-upload-1"})
    body = assert_error(reply, 413, "PayloadTooLarge", "MAX_BODY_MB=0.25")
    assert body["error"]["request_id"] == reply.headers["X-Request-ID"] == "my-upload-1"
    generated = echo_gateway.post("/run", data=big)  # without an id of the client's: a new one, said
    assert generated.json()["error"]["request_id"] == generated.headers["X-Request-ID"] != "my-upload-1"
    assert_still_serving(echo_gateway)


@pytest.mark.parametrize("chunked", [False, True])
def test_huge_body_is_a_json_413_too(echo_gateway, chunked):
    huge = b'{"SIGNATURE": "echo", "VALUE": "' + b"z" * 3_000_000 + b'"}'  # far over the 0.25 MB limit
    data = (huge[i:i + 65536] for i in range(0, len(huge), 65536)) if chunked else huge
    reply = echo_gateway.post("/run", data=data, headers={"Content-Type": "application/json"})
    assert_error(reply, 413, "PayloadTooLarge")
    assert_still_serving(echo_gateway)


def test_nan_is_not_json(echo_gateway):
    reply = echo_gateway.post("/run", data=b'{"SIGNATURE": "echo", "VALUE": NaN}',
                              headers={"Content-Type": "application/json"})
    assert_error(reply, 400, "BadRequest", "NaN")


def test_chunked_body_over_limit_is_413(echo_gateway):
    def chunks():
        yield b'{"SIGNATURE": "echo", "VALUE": "'
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"}'

    reply = echo_gateway.post("/run", data=chunks(), headers={"Content-Type": "application/json"})
    assert_error(reply, 413, "PayloadTooLarge")
    assert_still_serving(echo_gateway)


def test_chunked_body_under_limit_is_served(echo_gateway):
    def chunks():
        yield b'{"SIGNATURE": "echo", '
        yield b'"VALUE": "chunked"}'

    reply = echo_gateway.post("/run", data=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predict_result"]["echo"] == "chunked"


def test_pre_process_value_error_is_400_with_its_message(echo_gateway):
    assert_error(echo_gateway.run("echo"), 400, "InvalidInput", "VALUE should be defined in inputs")
    assert_still_serving(echo_gateway)


def test_exception_in_predict_is_500_with_type_and_message(echo_gateway):
    body = assert_error(echo_gateway.run("echo", VALUE=1, FAIL=True), 500, "ModelError")
    assert "RuntimeError" in body["ERROR"] and "model exploded on request" in body["ERROR"]
    assert "Traceback" not in body["ERROR"]
    assert_still_serving(echo_gateway)


def test_exception_in_post_process_is_500(echo_gateway):
    body = assert_error(echo_gateway.run("echo", VALUE="FAIL_POST"), 500, "ModelError")
    assert "KeyError" in body["ERROR"] and "_post_process" in body["ERROR"]
    assert_still_serving(echo_gateway)


def test_input_error_answers_its_own_status(echo_gateway):
    assert_error(echo_gateway.run("echo", VALUE=1, REJECT=True), 422, "InputError", "VALUE rejected on request")
    assert_still_serving(echo_gateway)


def test_numpy_results_serialise(echo_gateway):
    reply = echo_gateway.run("echo", VALUE=1, NUMPY=True)
    assert reply.status_code == 200, reply.text
    assert reply.json()["predict_result"] == {"array": [0, 1, 2], "scalar": 1.5, "flag": True}


def test_model_slower_than_deadline_is_504_and_worker_comes_back(echo_gateway):
    body = assert_error(echo_gateway.run("echo", VALUE=1, SLEEP=3), 504, "Timeout")  # REQUEST_TIMEOUT is 2
    assert "REQUEST_TIMEOUT" in body["ERROR"]
    # The worker is still sleeping (a thread cannot be killed); the other worker serves meanwhile.
    assert echo_gateway.run("echo", VALUE="meanwhile").status_code == 200
    echo_gateway.wait_for("/ready", 200, timeout=5)
    import time

    deadline = time.monotonic() + 5
    while echo_gateway.servers()["echo"]["WORKERS"]["busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_still_serving(echo_gateway)


@pytest.mark.parametrize("path", ["/shutdown", "/kill_server", "/start_server", "/update_workers", "/run"])
def test_get_on_post_routes_is_405_json(echo_gateway, path):
    reply = echo_gateway.get(path)
    assert_error(reply, 405, "MethodNotAllowed")
    assert "POST" in reply.headers["Allow"]


def test_unknown_route_is_404_json(echo_gateway):
    assert_error(echo_gateway.get("/no/such/route"), 404, "NotFound")


@pytest.mark.parametrize("path", ["/shutdown", "/kill_server", "/start_server", "/update_workers"])
def test_admin_routes_need_the_token(echo_gateway, path):
    payload = {"SIGNATURE": "echo", "NR_WORKERS": 1}
    assert_error(echo_gateway.post(path, payload), 401, "Unauthorized")
    assert_error(echo_gateway.post(path, payload, headers={"Authorization": "Bearer wrong-token-xxxxx"}), 401,
                 "Unauthorized")
    assert_error(echo_gateway.post(path, {**payload, "TOKEN": "wrong"}), 401, "Unauthorized")
    assert_still_serving(echo_gateway)


def test_token_in_body_is_accepted(echo_gateway):
    reply = echo_gateway.post("/update_workers", {"SIGNATURE": "echo_b", "NR_WORKERS": 1, "TOKEN": echo_gateway.token})
    assert reply.status_code == 200, reply.text


def test_shutdown_with_another_signature_is_400_and_nothing_stops(echo_gateway):
    assert_error(echo_gateway.admin("/shutdown", {"SIGNATURE": "echo"}), 400, "BadRequest")
    assert_still_serving(echo_gateway)


def test_update_workers_rejects_bad_counts(echo_gateway):
    for count in (0, "3", None, 10_000, True):
        assert_error(echo_gateway.admin("/update_workers", {"SIGNATURE": "echo_b", "NR_WORKERS": count}), 400)
    assert_still_serving(echo_gateway)


def test_raw_http_garbage_does_not_break_the_gateway(echo_gateway):
    conn = http.client.HTTPConnection("127.0.0.1", echo_gateway.port, timeout=5)
    conn.putrequest("POST", "/run")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "1000")
    conn.endheaders()
    conn.send(b'{"SIGNATURE": "echo"')  # then hang up before the promised body arrives
    conn.close()
    assert_still_serving(echo_gateway)


@pytest.mark.parametrize(
    "body, prefix",
    [
        (b'{"X": {"SIGNATURE": "echo_b"}, "SIGNATURE": "echo", "VALUE": "n"}', "e1"),  # a nested one comes first
        (b'{"X": "\\"SIGNATURE\\": \\"echo_b\\"", "SIGNATURE": "echo", "VALUE": "n"}', "e1"),  # inside a string
        (b'{"SIGNATURE": "echo", "VALUE": "n", "SIGNATURE": "echo_b"}', "e2"),  # JSON's last key wins
        (b'{"SIGNATURE": "ech\\u006f_b", "VALUE": "n"}', "e2"),  # an escaped name
    ],
    ids=["nested-first", "in-a-string", "duplicate-key", "escaped"],
)
def test_the_endpoint_is_the_one_the_parsed_body_names(echo_gateway, body, prefix):
    """The gateway routes by the first "SIGNATURE" it sees without parsing the body; whenever
    that is not the body's real top-level SIGNATURE, the answer still comes from the right one."""
    reply = requests.post(echo_gateway.url + "/run", data=body, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["predict_result"]["prefix"] == prefix


@pytest.mark.parametrize(
    "body, status, error_type",
    [
        (b'{"X": {"SIGNATURE": "echo"}, "VALUE": 1}', 400, "BadRequest"),  # no top-level SIGNATURE
        (b'{"X": {"SIGNATURE": "echo"}, "SIGNATURE": "nope"}', 404, "UnknownSignature"),
        (b'{"SIGNATURE": "echo", "VALUE": 1', 400, "BadRequest"),  # routable, but not JSON
    ],
)
def test_a_guessed_signature_never_hides_an_error(echo_gateway, body, status, error_type):
    assert_error(requests.post(echo_gateway.url + "/run", data=body, timeout=10), status, error_type)
