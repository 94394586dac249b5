"""errors.py and jsonutil.py: error bodies, statuses and numpy-aware encoding."""

from __future__ import annotations

import decimal
import enum
import json

import numpy as np
import pytest

from basic_inference_server import jsonutil
from basic_inference_server.errors import (
    BadRequest,
    InputError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServingError,
    Unavailable,
    error_body,
    from_http_status,
)
from basic_inference_server.jsonbody import loads_object


# -- dumps -------------------------------------------------------------------------------------
def test_dumps_handles_numpy_values():
    value = {
        "count": np.int64(3),
        "score": np.float32(0.5),
        "flag": np.bool_(True),
        "matrix": np.arange(4, dtype=np.int32).reshape(2, 2),
        "plain": 1.5,
    }
    text = jsonutil.dumps(value)
    assert json.loads(text) == {"count": 3, "score": 0.5, "flag": True, "matrix": [[0, 1], [2, 3]], "plain": 1.5}
    assert jsonutil.dumps_bytes(value) == text.encode()


def test_dumps_is_compact_and_keeps_unicode():
    assert jsonutil.dumps({"a": [1, 2], "word": "casă"}) == '{"a":[1,2],"word":"casă"}'


def test_dumps_handles_sets_tuples_and_bytes():
    assert json.loads(jsonutil.dumps({"s": {1}, "t": (1, 2), "b": b"hi"})) == {"s": [1], "t": [1, 2], "b": "hi"}


def test_dumps_rejects_unknown_objects():
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        jsonutil.dumps({"x": object()})


# -- errors ------------------------------------------------------------------------------------
def test_error_body_shape():
    assert error_body("Timeout", "too slow") == {
        "ERROR": "too slow",
        "error": {"type": "Timeout", "message": "too slow"},
    }


def test_error_to_body_and_headers():
    exc = Overloaded("queue full")
    assert exc.status == 503
    assert exc.to_body() == {"ERROR": "queue full", "error": {"type": "Overloaded", "message": "queue full"}}
    assert exc.headers() == {"Retry-After": "1"}
    assert Unavailable("starting", retry_after=30).headers() == {"Retry-After": "30"}
    assert BadRequest("x").headers() == {}


def test_status_can_be_overridden_per_instance():
    assert ServingError("x", status=418).status == 418
    assert ServingError("y").status == 500


@pytest.mark.parametrize("status", [200, 399, 500, 503, "422"])
def test_input_error_rejects_non_4xx_status(status):
    with pytest.raises(ValueError, match="4xx"):
        InputError("bad", status=status)


def test_input_error_default_and_custom_status():
    assert InputError("bad").status == 400
    err = InputError("too long", status=422)
    assert err.status == 422
    assert err.to_body()["error"] == {"type": "InputError", "message": "too long"}


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequest), (404, NotFound), (405, MethodNotAllowed), (413, PayloadTooLarge)],
)
def test_from_http_status_maps_framework_errors(status, cls):
    exc = from_http_status(status, "msg")
    assert type(exc) is cls
    assert exc.status == status


def test_from_http_status_keeps_unknown_status():
    exc = from_http_status(418, "teapot")
    assert exc.status == 418
    assert exc.to_body()["error"]["type"] == "ServingError"


def test_nan_and_infinity_are_refused_both_ways():
    import math

    with pytest.raises(ValueError):
        jsonutil.dumps({"score": math.nan})
    with pytest.raises(ValueError):
        jsonutil.dumps({"score": math.inf})
    for body in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'):
        with pytest.raises(BadRequest):
            loads_object(body)


# -- answers: the fast encoder writes what the standard one writes, and refuses what it refuses ------
class _Small(enum.IntEnum):
    ONE = 1


ANSWERS = [
    {"predict_result": {"class_id": [1], "probabilities": [[0.015172928, 0.8988746, 0.08595253]]}, "call_id": 7},
    [0.001 * i for i in range(1000)], [[1, 2], [3, 4.5]], [], (1, 2), {"é": "ü\n"}, [True, None, -0.0, 1e300],
    [1e308, 1e308],  # the sum overflows: the standard path, same answer
    [1, 2**70], {"k": [b"bytes are text"]}, {1: "int key"}, [_Small.ONE], {"x": np.float32(1.5)},
    [np.int64(3), 2.0], {"deep": [[[[1]]]]},
    [0.5, 10**400],  # the sum overflows a float: each item is looked at, the standard path writes it
]
REFUSED = [float("nan"), [1.0, float("inf")], {"x": [float("-inf")]}, [decimal.Decimal("1.5")],
           {"x": object()}]


@pytest.mark.parametrize("value", ANSWERS, ids=range(len(ANSWERS)))
def test_answers_encode_as_the_standard_library_does(value):
    standard = json.dumps(value, default=jsonutil._default, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()
    assert json.loads(jsonutil.dumps_bytes(value)) == json.loads(standard)


@pytest.mark.parametrize("value", REFUSED, ids=range(len(REFUSED)))
def test_what_json_has_not_is_refused(value):
    with pytest.raises((TypeError, ValueError)):
        jsonutil.dumps_bytes(value)


def test_the_gateways_modules_do_not_import_numpy():
    import subprocess
    import sys

    code = ("import sys, basic_inference_server.gateway.cli, basic_inference_server.gateway.core; "
            "print('numpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
