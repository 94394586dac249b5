"""gateway/envelope.py: the fields the gateway adds to every successful answer."""

from __future__ import annotations

import json
import re

import pytest

from basic_inference_server.gateway.routing.envelope import Envelope
from basic_inference_server.lib_ver import LIB_VER

ENVELOPE_KEYS = {"time", "ver", "ver-app", "ver-lib", "gw-uptime", "hostname"}


@pytest.fixture
def envelope():
    return Envelope("2.5.1", hostname="box-1")


def server_answer(result):
    return json.dumps({"predict_result": result, "call_id": 4, "signature": "h.s.C.0",
                       "worker_id": "h:0"}).encode()


def test_wrap_adds_envelope_and_keeps_the_answer(envelope):
    wrapped = json.loads(envelope.wrap(server_answer({"label": "cat", "score": 0.9})))
    assert wrapped["predict_result"] == {"label": "cat", "score": 0.9}
    assert wrapped["call_id"] == 4
    assert wrapped["worker_id"] == "h:0"
    assert ENVELOPE_KEYS <= set(wrapped)
    assert wrapped["ver"] == wrapped["ver-app"] == "2.5.1"
    assert wrapped["ver-lib"] == LIB_VER
    assert wrapped["hostname"] == "box-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", wrapped["time"])
    assert re.fullmatch(r"0:00:0\d", wrapped["gw-uptime"])


def test_wrap_empty_object(envelope):
    wrapped = json.loads(envelope.wrap(b"{}"))
    assert set(wrapped) == ENVELOPE_KEYS


def test_wrap_tolerates_trailing_whitespace(envelope):
    wrapped = json.loads(envelope.wrap(b'{"a": 1 }\n'))
    assert wrapped["a"] == 1
    assert ENVELOPE_KEYS <= set(wrapped)


def test_flat_moves_result_keys_to_top_level(envelope):
    wrapped = json.loads(envelope.wrap(server_answer({"label": "cat", "call_id": "mine"}), flat=True))
    assert "predict_result" not in wrapped
    assert wrapped["label"] == "cat"
    assert wrapped["call_id"] == 4  # the server's call id wins over a worker key of the same name
    assert wrapped["signature"] == "h.s.C.0"
    assert ENVELOPE_KEYS <= set(wrapped)


def test_flat_keeps_non_dict_result(envelope):
    wrapped = json.loads(envelope.wrap(server_answer([1, 2]), flat=True))
    assert wrapped["predict_result"] == [1, 2]
    assert wrapped["call_id"] == 4


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"3", b"", b"{\"a\": 1"])
def test_non_object_raises_value_error(envelope, body):
    with pytest.raises(ValueError):
        envelope.wrap(body)


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'"text"',
        b"{\"a\": 1",
    ],
)
def test_flat_non_object_raises_value_error(envelope, body):
    with pytest.raises(ValueError):
        envelope.wrap(body, flat=True)


def test_add_to_updates_a_payload(envelope):
    payload = envelope.add_to({"SYSTEM_STATUS": {}})
    assert set(payload) == ENVELOPE_KEYS | {"SYSTEM_STATUS"}
