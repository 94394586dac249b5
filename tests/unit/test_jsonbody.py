"""jsonbody.py: request bodies parsed strictly, within MAX_JSON_VALUES, MAX_JSON_CONTAINERS and
MAX_JSON_DEPTH known before parsing; a property test holds the byte-level measure to the parsed value."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basic_inference_server import jsonbody
from basic_inference_server.errors import BadRequest, PayloadTooLarge
from basic_inference_server.jsonbody import JsonLimits, loads_object, shape


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Request body is empty"),
        (b'{"SIGNATURE": ', "Malformed JSON body: it ends in the middle of a value"),
        (b"\xff\xfe\x00garbage", "Malformed JSON body"),
        (b'{"a" 1}', "Malformed JSON body: expected ':' \\(byte 5\\)"),
        (b"[1, 2]", "JSON body must be an object, got an array"),
        (b'"text"', "JSON body must be an object, got a string"),
        (b"null", "JSON body must be an object, got null"),
        (b'{"a": NaN}', "Malformed JSON body"),
        (b'{"a": -Infinity}', "Malformed JSON body"),
    ],
    ids=["empty", "truncated", "not-utf8", "syntax", "list", "string", "null", "nan", "infinity"],
)
def test_bad_bodies_are_400_saying_what_is_wrong(body, message):
    with pytest.raises(BadRequest, match=message) as info:
        loads_object(body)
    assert info.value.status == 400


@pytest.mark.parametrize(("body", "field", "what"), [
    (b'{"SIGNATURE": "a", "X": 1e400}', "X", "out of range"),
    (b'{"x": {"y": [1, 2, {"z": -1e999}]}}', "x.y[2].z", "out of range"),
    (b'{"SIGNATURE": "a", "TEXT": "\\ud800"}', "TEXT", "unpaired UTF-16 surrogate"),
    (b'{"texts": ["fine", "\\udc00 alone"]}', "texts", "unpaired UTF-16 surrogate"),
    (b'{"inputs": {"text": "\\ud83d"}}', "text", "unpaired UTF-16 surrogate"),
    (b'{"a": 1, "b": "\xff"}', "b", "not valid UTF-8"),
], ids=["1e400", "nested-path", "surrogate", "surrogate-in-list", "surrogate-nested", "utf8"])
def test_what_the_standard_parser_lets_through_is_a_400_naming_the_field(body, field, what):
    with pytest.raises(BadRequest) as info:
        loads_object(body)
    assert info.value.status == 400
    assert f"field {field!r}" in info.value.message and what in info.value.message, info.value.message


@pytest.mark.parametrize("body", [
    b'{"X": 123456789012345678901234567890, "Y": -92233720368547758090000}',  # integers beyond 64 bits stay exact
    b'{"X": 1.7976931348623157e308, "Y": 1.0000000000000002, "Z": -0.0, "W": 1e-400}',
    b'{"X": 1, "X": 2}',
    b'{"X": "\\u00e9\\n\\ud83d\\ude00", "\xc3\xa9": [true, false, null, {}]}',
    b'  {"X": [1, 2.5, "3"]}\n',
], ids=["big-int", "floats", "duplicate-key", "unicode", "whitespace"])
def test_valid_bodies_parse_as_the_standard_parser_reads_them(body):
    assert repr(loads_object(body)) == repr(json.loads(body))


def test_a_utf8_byte_order_mark_is_skipped():
    assert loads_object(b'\xef\xbb\xbf{"X": 1}') == {"X": 1}


def test_depth_is_bounded_by_max_json_depth():
    limits = JsonLimits(max_depth=16)
    at_limit = b'{"a":' + b"[" * 15 + b"]" * 15 + b"}"
    assert loads_object(at_limit, limits)["a"]
    with pytest.raises(BadRequest, match="17 deep, deeper than MAX_JSON_DEPTH=16") as info:
        loads_object(b'{"a":' + b"[" * 16 + b"]" * 16 + b"}", limits)
    assert info.value.status == 400
    with pytest.raises(BadRequest, match="MAX_JSON_DEPTH=256"):
        loads_object(b"[" * 100_000)  # malformed too: the bound comes first, and no RecursionError


def test_arrays_and_objects_are_counted_against_max_json_containers():
    limits = JsonLimits(max_containers=1000, max_depth=8)
    fits = json.dumps({"rows": [[i] for i in range(998)]}).encode()
    assert len(loads_object(fits, limits)["rows"]) == 998
    with pytest.raises(PayloadTooLarge, match=r"more than MAX_JSON_CONTAINERS=1000 arrays and objects \(1001") as info:
        loads_object(json.dumps({"rows": [[i] for i in range(999)]}).encode(), limits)
    assert info.value.status == 413


def test_every_value_is_counted_against_max_json_values():
    limits = JsonLimits(max_values=1000)
    assert len(loads_object(json.dumps({"v": list(range(997))}).encode(), limits)["v"]) == 997
    with pytest.raises(PayloadTooLarge, match="more than MAX_JSON_VALUES=1000") as info:
        loads_object(json.dumps({"v": list(range(998))}).encode(), limits)
    assert info.value.status == 413


def test_brackets_and_separators_inside_strings_do_not_count():
    limits = JsonLimits(max_values=10, max_containers=2, max_depth=2)
    body = json.dumps({"text": "[[[{{{,,,:::" * 1000, "quoted": '"[' * 50, "slash": "\\" * 7 + "[" * 9}).encode()
    assert loads_object(body, limits)["text"].startswith("[[[")


def test_a_container_attack_is_refused_before_it_is_parsed():
    body = b'{"SIGNATURE": "x", "a": [' + b"[[[[[[[[[[]]]]]]]]]]," * 50_000 + b"[]]}"
    with pytest.raises(PayloadTooLarge, match="MAX_JSON_CONTAINERS=500000"):
        loads_object(body)


def test_the_collector_is_paused_while_any_thread_parses_and_resumed_after():
    import gc

    assert gc.isenabled()
    with jsonbody.collector_paused():
        with jsonbody.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_signature_of_names_what_is_missing():
    assert jsonbody.signature_of({"SIGNATURE": "a"}) == "a"
    with pytest.raises(BadRequest, match="SIGNATURE not found"):
        jsonbody.signature_of({})
    with pytest.raises(BadRequest, match="SIGNATURE must be a string, got a number"):
        jsonbody.signature_of({"SIGNATURE": 5})


# -- the byte-level measure against the parsed value --------------------------------------------
def _counts(value: object, depth: int = 0) -> tuple[int, int, int, int]:
    """(containers, values, empty containers, depth) of a parsed value."""
    if isinstance(value, dict):
        counts = [_counts(v, depth + 1) for v in value.values()]
        return (1 + sum(c[0] for c in counts), 1 + len(value) + sum(c[1] for c in counts),
                (not value) + sum(c[2] for c in counts), max([depth + 1] + [c[3] for c in counts]))
    if isinstance(value, list):
        counts = [_counts(v, depth + 1) for v in value]
        return (1 + sum(c[0] for c in counts), 1 + sum(c[1] for c in counts),
                (not value) + sum(c[2] for c in counts), max([depth + 1] + [c[3] for c in counts]))
    return 0, 1, 0, depth


_TEXT = st.text(alphabet=st.sampled_from('ab[]{},:"\\ \n\u00e9\U0001f600'), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_TEXT, children, max_size=5),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_JSON, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
def test_the_measure_matches_the_parsed_value(value, indent, ascii_only):
    body = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    containers, values, empty, depth = _counts(value)
    measured = shape(body)
    assert measured.containers == containers
    assert measured.depth == depth
    assert measured.values == values + empty  # an empty array or object counts twice


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_any_bytes_are_parsed_or_refused_with_a_client_error(data):
    try:
        loads_object(data, JsonLimits(max_values=50, max_containers=20, max_depth=5))
    except (BadRequest, PayloadTooLarge) as exc:
        assert exc.status in (400, 413)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_JSON, chunk=st.integers(min_value=1, max_value=9))
def test_the_measure_is_the_same_a_slice_at_a_time(value, chunk):
    body = json.dumps(value, ensure_ascii=False).encode()
    whole = shape(body)
    saved, jsonbody._CHUNK = jsonbody._CHUNK, chunk
    try:
        assert shape(body) == whole
    finally:
        jsonbody._CHUNK = saved
