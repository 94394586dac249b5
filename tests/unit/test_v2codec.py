"""transport/v2codec.py and server/v2.py: Open Inference Protocol (KServe V2) tensors to numpy
and back, JSON or binary, and a model's declared metadata."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from basic_inference_server.errors import BadRequest, InvalidInput, ModelError, PayloadTooLarge, ServingError
from basic_inference_server.jsonbody import JsonLimits
from basic_inference_server.server.v2 import ModelMetadata, accept, error_body
from basic_inference_server.transport.v2codec import (
    DATATYPES,
    HEADER_LENGTH,
    PARAMETERS,
    check_inputs,
    datatype_of,
    decode_request,
    encode_response,
    to_array,
)


# -- helpers: requests built by hand, answers parsed back without the codec ----------------------
def json_body(*inputs: dict[str, Any], **request: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **request}).encode()


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary_body(header: dict[str, Any], *parts: bytes) -> tuple[bytes, int]:
    """A request with the binary tensor extension: the JSON header, then the raw tensors."""
    head = json.dumps(header).encode()
    return head + b"".join(parts), len(head)


def binary_input(name: str, datatype: str, shape: list[int], raw: bytes) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}


def a_request(outputs: list[dict[str, Any]] | None = None, **request: Any):
    """A decoded request with one input; ``outputs``/``parameters``/``id`` as a client would send them."""
    if outputs is not None:
        request["outputs"] = outputs
    return decode_request(json_body(tensor("X", "INT64", [1], [1]), **request))


def parse_answer(parts: list[Any], header_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The answer's JSON and each output's array, read the way a V2 client reads them."""
    body = b"".join(parts)
    if header_length is None:
        header, rest = json.loads(body), b""
    else:
        header, rest = json.loads(body[:header_length]), body[header_length:]
    arrays, offset = {}, 0
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            if out["datatype"] == "BYTES":
                array = np.array([s.encode() for s in out["data"]], dtype=object)
            else:
                array = np.array(out["data"], dtype=DATATYPES[out["datatype"]])
            arrays[out["name"]] = array.reshape(out["shape"])
            continue
        raw = rest[offset:offset + size]
        offset += size
        if out["datatype"] == "BYTES":
            elements, at = [], 0
            while at < len(raw):
                (n,) = struct.unpack_from("<I", raw, at)
                elements.append(raw[at + 4:at + 4 + n])
                at += 4 + n
            array = np.empty(len(elements), dtype=object)
            array[:] = elements
        else:
            array = np.frombuffer(raw, dtype=DATATYPES[out["datatype"]])
        arrays[out["name"]] = array.reshape(out["shape"])
    assert offset == len(rest)
    return header, arrays


def invalid(body: bytes, header_length: int | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        decode_request(body, header_length)
    assert caught.value.status == 400
    return caught.value


# -- JSON inputs ----------------------------------------------------------------------------------
NUMERIC = [name for name in DATATYPES if name != "BYTES"]
SAMPLES = {"BOOL": [[True, False, True], [False, False, True]]}


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_data_of_every_datatype_becomes_an_array_of_its_dtype_and_shape(datatype, nested):
    """Each datatype arrives as the numpy dtype it names, reshaped to ``shape`` (flat or nested data)."""
    rows = SAMPLES.get(datatype, [[0, 1, 2], [3, 4, 5]])
    data = rows if nested else [v for row in rows for v in row]
    request = decode_request(json_body(tensor("T", datatype, [2, 3], data)))
    array = request.inputs["T"]
    assert array.dtype == DATATYPES[datatype]
    assert array.shape == (2, 3)
    assert array.tolist() == rows


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_float_inputs_accept_json_integers(datatype):
    array = decode_request(json_body(tensor("F", datatype, [3], [1, -2, 3]))).inputs["F"]
    assert array.dtype == DATATYPES[datatype]
    assert array.tolist() == [1.0, -2.0, 3.0]


def test_float32_from_json_floats_is_rounded_to_float32():
    array = decode_request(json_body(tensor("F", "FP32", [2], [0.1, 2.5]))).inputs["F"]
    assert array.dtype == np.float32
    assert array.tolist() == [np.float32(0.1).item(), 2.5]


@pytest.mark.parametrize(("datatype", "values"), [
    ("UINT8", [0, 255]), ("INT8", [-128, 127]), ("UINT16", [0, 65535]), ("INT16", [-32768, 32767]),
    ("UINT32", [0, 2**32 - 1]), ("INT32", [-2**31, 2**31 - 1]), ("UINT64", [0, 2**63 - 1]),
    ("INT64", [-2**63, 2**63 - 1]),
])
def test_integer_inputs_take_their_whole_range(datatype, values):
    array = decode_request(json_body(tensor("I", datatype, [2], values))).inputs["I"]
    assert array.dtype == DATATYPES[datatype]
    assert array.tolist() == values


@pytest.mark.parametrize("values", [[2**64 - 1], [0, 2**64 - 1], [1, 2**63]])
def test_uint64_inputs_take_values_above_int64(values):
    """UINT64 values of 2**63 and over are valid, alone or beside small ones."""
    array = decode_request(json_body(tensor("I", "UINT64", [len(values)], values))).inputs["I"]
    assert array.dtype == np.dtype("<u8")
    assert array.tolist() == values


def test_bool_input_from_json_true_false():
    array = decode_request(json_body(tensor("B", "BOOL", [2, 2], [True, False, False, True]))).inputs["B"]
    assert array.dtype == np.bool_
    assert array.tolist() == [[True, False], [False, True]]


def test_bytes_input_from_json_strings_is_an_object_array_of_utf8_bytes():
    request = decode_request(json_body(tensor("S", "BYTES", [2, 2], [["a", "bé"], ["", "日本"]])))
    array = request.inputs["S"]
    assert array.dtype == object
    assert array.shape == (2, 2)
    assert array.tolist() == [[b"a", "bé".encode()], [b"", "日本".encode()]]
    assert all(type(element) is bytes for element in array.flat)


def test_a_scalar_input_has_shape_empty():
    array = decode_request(json_body(tensor("N", "INT32", [], 7))).inputs["N"]
    assert (array.shape, array.dtype, array.item()) == ((), np.dtype("<i4"), 7)


def test_an_empty_input_of_shape_zero():
    array = decode_request(json_body(tensor("E", "FP32", [0, 3], []))).inputs["E"]
    assert (array.shape, array.dtype) == ((0, 3), np.dtype("<f4"))


def test_request_id_and_parameters_reach_the_worker_inputs():
    """The worker sees each input by name and the request's parameters under PARAMETERS."""
    request = decode_request(json_body(tensor("X", "INT64", [1], [5]), id="r-9",
                                       parameters={"temperature": 0.5, "binary_data_output": True}))
    assert request.id == "r-9"
    assert request.binary_output is True
    assert request.parameters == {"temperature": 0.5}
    inputs = request.worker_inputs()
    assert set(inputs) == {"X", PARAMETERS}
    assert inputs[PARAMETERS] == {"temperature": 0.5}
    assert inputs["X"].tolist() == [5]


# -- binary inputs --------------------------------------------------------------------------------
def test_binary_inputs_of_each_kind_mixed_with_a_json_input():
    """Binary tensors follow the JSON header in input order; a JSON input may sit between them."""
    fp32 = np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, 7.0]], dtype="<f4")
    int64 = np.array([-(2**40), 0, 2**62], dtype="<i8")
    flags = np.array([True, False, True, True])
    pixels = np.arange(250, 256, dtype=np.uint8).reshape(2, 3)
    words = [b"hello", b"", "wörld".encode(), bytes([0, 255, 10])]
    raw = [fp32.tobytes(), int64.tobytes(), flags.tobytes(), pixels.tobytes(), length_prefixed(*words)]
    header = {"inputs": [
        binary_input("F", "FP32", [2, 3], raw[0]),
        binary_input("I", "INT64", [3], raw[1]),
        tensor("J", "INT32", [2], [10, 20]),
        binary_input("B", "BOOL", [4], raw[2]),
        binary_input("U", "UINT8", [2, 3], raw[3]),
        binary_input("S", "BYTES", [2, 2], raw[4]),
    ]}
    body, header_length = binary_body(header, *raw)
    inputs = decode_request(body, header_length).inputs
    assert list(inputs) == ["F", "I", "J", "B", "U", "S"]
    assert inputs["F"].dtype == np.float32 and inputs["F"].shape == (2, 3)
    np.testing.assert_array_equal(inputs["F"], fp32)
    assert inputs["I"].dtype == np.int64
    np.testing.assert_array_equal(inputs["I"], int64)
    assert inputs["J"].tolist() == [10, 20]
    assert inputs["B"].dtype == np.bool_
    assert inputs["B"].tolist() == [True, False, True, True]
    assert inputs["U"].dtype == np.uint8
    np.testing.assert_array_equal(inputs["U"], pixels)
    assert inputs["S"].dtype == object and inputs["S"].shape == (2, 2)
    assert inputs["S"].reshape(-1).tolist() == words
    assert all(type(element) is bytes for element in inputs["S"].flat)


def test_a_binary_input_is_a_read_only_view_of_the_request_body():
    """No copy: the array's memory is the body's own bytes."""
    values = np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4")
    body, header_length = binary_body({"inputs": [binary_input("F", "FP32", [4], values.tobytes())]},
                                      values.tobytes())
    array = decode_request(body, header_length).inputs["F"]
    assert array.base is not None
    assert np.shares_memory(array, np.frombuffer(body, dtype=np.uint8))
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, values)


def test_binary_inputs_of_zero_bytes_and_a_header_length_equal_to_the_body():
    body, header_length = binary_body({"inputs": [binary_input("E", "FP64", [0], b""),
                                                  binary_input("S", "BYTES", [0], b"")]})
    inputs = decode_request(body, header_length).inputs
    assert (inputs["E"].shape, inputs["E"].dtype) == ((0,), np.dtype("<f8"))
    assert (inputs["S"].shape, inputs["S"].dtype) == ((0,), np.dtype(object))


def test_an_all_json_request_may_announce_its_whole_length():
    body = json_body(tensor("X", "INT8", [2], [-1, 1]))
    assert decode_request(body, len(body)).inputs["X"].tolist() == [-1, 1]


# -- refused inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", ["FP99", "BF16", "fp32", None])
def test_an_unknown_or_unsupported_datatype_is_refused(datatype):
    error = invalid(json_body(tensor("pixels", datatype, [1], [1.0])))
    assert "'pixels'" in error.message
    assert f"unsupported datatype {datatype!r}" in error.message


def test_shape_and_json_data_count_must_agree():
    error = invalid(json_body(tensor("pixels", "FP32", [2, 2], [1.0, 2.0, 3.0])))
    assert error.message == "input 'pixels': shape [2, 2] needs 4 element(s), data has 3"


def test_shape_and_binary_size_must_agree():
    raw = np.zeros(3, dtype="<f4").tobytes()
    body, header_length = binary_body({"inputs": [binary_input("pixels", "FP32", [4], raw)]}, raw)
    error = invalid(body, header_length)
    assert error.message == "input 'pixels': shape [4] of FP32 needs 16 bytes, binary_data_size is 12"


def test_bytes_binary_element_count_must_agree_with_the_shape():
    raw = length_prefixed(b"a", b"b")
    body, header_length = binary_body({"inputs": [binary_input("words", "BYTES", [3], raw)]}, raw)
    assert invalid(body, header_length).message == "input 'words': shape [3] needs 3 element(s), data has 2"


def test_ragged_json_rows_are_refused():
    error = invalid(json_body(tensor("rows", "FP32", [2, 2], [[1.0, 2.0], [3.0]])))
    assert "'rows'" in error.message and "not a regular array" in error.message


@pytest.mark.parametrize(("datatype", "data", "got"), [
    ("INT64", [1.5, 2.0], "floats"),
    ("INT32", [1, 2.0], "floats"),
    ("FP32", ["1.0", "2.0"], "strings"),
    ("BOOL", [1, 0], "integers"),
    ("BYTES", [1, 2], "values that are not strings"),
    ("UINT8", [True, False], "booleans"),
    ("FP64", [{"a": 1}, {"b": 2}], "mixed values"),
])
def test_json_data_of_the_wrong_kind_is_refused(datatype, data, got):
    error = invalid(json_body(tensor("vals", datatype, [2], data)))
    assert error.message == f"input 'vals': data does not match datatype {datatype} (got {got})"


@pytest.mark.parametrize(("datatype", "data", "low", "high"), [
    ("UINT8", [0, 256], 0, 256),
    ("UINT8", [-1, 3], -1, 3),
    ("INT8", [-129, 0], -129, 0),
    ("INT8", [5, 128], 5, 128),
    ("UINT16", [65536, 1], 1, 65536),
    ("INT64", [2**63, 2**63 + 1], 2**63, 2**63 + 1),
])
def test_json_integers_out_of_range_are_refused(datatype, data, low, high):
    error = invalid(json_body(tensor("ints", datatype, [2], data)))
    assert error.message == f"input 'ints': values {low}..{high} do not fit {datatype}"


@pytest.mark.parametrize("data", [[0, 2**63], [-1, 2**64], [2**64]])
def test_json_integers_beyond_64_bits_are_refused(data):
    error = invalid(json_body(tensor("big", "INT64", [len(data)], data)))
    assert error.message.startswith("input 'big': ")


@pytest.mark.parametrize("shape", [[-1, 2], [2, True], [1.0], "2", None])
def test_a_shape_that_is_not_a_list_of_sizes_is_refused(shape):
    error = invalid(json_body(tensor("img", "FP32", shape, [1.0, 2.0])))
    assert error.message == f"input 'img': shape must be a list of integers >= 0, got {shape!r}"


def test_an_input_without_data_or_binary_size_is_refused():
    error = invalid(json_body({"name": "img", "datatype": "FP32", "shape": [1]}))
    assert error.message == "input 'img' has neither data nor parameters.binary_data_size"


@pytest.mark.parametrize("size", [-1, 1.5, True, "4"])
def test_a_binary_size_that_is_not_a_count_is_refused(size):
    body = json_body({"name": "img", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": size}})
    error = invalid(body + b"\0", len(body))
    assert error.message == f"input 'img': binary_data_size must be an integer >= 0, got {size!r}"


def test_an_input_given_twice_is_refused():
    error = invalid(json_body(tensor("img", "INT8", [1], [1]), tensor("img", "INT8", [1], [2])))
    assert error.message == "input 'img' is given twice"


def test_an_input_named_parameters_is_refused():
    """PARAMETERS is where the worker finds the request's parameters: no input may take the name."""
    error = invalid(json_body(tensor("PARAMETERS", "INT8", [1], [1])))
    assert error.message == "'PARAMETERS' cannot be an input's name"


@pytest.mark.parametrize("inputs", [[], {"img": [1]}, "img", None])
def test_inputs_must_be_a_non_empty_list(inputs):
    error = invalid(json.dumps({"inputs": inputs}).encode())
    assert error.message == "inputs must be a non-empty list of tensors"


def test_inputs_missing_altogether_are_refused():
    assert invalid(b'{"id": "x"}').message == "inputs must be a non-empty list of tensors"


@pytest.mark.parametrize(("raw", "message"), [
    (["img"], "each input must be a JSON object, got str"),
    ([{"datatype": "FP32", "shape": [1], "data": [1]}], "each input needs a name (a non-empty string)"),
    ([{"name": "", "datatype": "FP32", "shape": [1], "data": [1]}], "each input needs a name (a non-empty string)"),
])
def test_an_input_that_is_not_a_named_tensor_is_refused(raw, message):
    assert invalid(json.dumps({"inputs": raw}).encode()).message == message


def test_a_non_string_id_is_refused():
    assert invalid(json_body(tensor("X", "INT8", [1], [1]), id=5)).message == "id must be a string, got int"


def test_parameters_that_are_not_an_object_are_refused():
    error = invalid(json_body(tensor("X", "INT8", [1], [1]), parameters=[1]))
    assert error.message == "parameters must be a JSON object, got list"


def test_binary_data_announced_past_the_end_of_the_body_is_refused():
    raw = np.zeros(4, dtype="<f4").tobytes()
    body, header_length = binary_body({"inputs": [binary_input("img", "FP32", [4], raw)]}, raw[:10])
    error = invalid(body, header_length)
    assert error.message == "input 'img': binary data truncated: 16 bytes announced at offset 0, 10 left in the body"


def test_the_second_binary_input_truncated_names_it_and_its_offset():
    first, second = b"\1\2", b"\3\4\5"
    body, header_length = binary_body({"inputs": [binary_input("a", "UINT8", [2], first),
                                                  binary_input("b", "UINT8", [3], second)]}, first, second[:1])
    error = invalid(body, header_length)
    assert error.message == "input 'b': binary data truncated: 3 bytes announced at offset 2, 1 left in the body"


def test_bytes_after_the_last_binary_input_are_refused():
    raw = b"\1\2"
    body, header_length = binary_body({"inputs": [binary_input("a", "UINT8", [2], raw)]}, raw, b"junk")
    assert invalid(body, header_length).message.startswith("4 bytes after the last binary input")


def test_binary_bytes_after_an_all_json_header_are_refused():
    """A header length shorter than the body with no binary input: the extra bytes are an error."""
    body = json_body(tensor("X", "INT8", [1], [1]))
    assert invalid(body + b"\0\0", len(body)).message.startswith("2 bytes after the last binary input")


@pytest.mark.parametrize("header_length", [0, -1, 10_000])
def test_a_header_length_outside_the_body_is_refused(header_length):
    body = json_body(tensor("X", "INT8", [1], [1]))
    error = invalid(body, header_length)
    assert error.message == f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"


@pytest.mark.parametrize("header", [b"not json", b"[1, 2]", b'{"inputs": [', b"\xff\xfe"])
def test_a_header_that_is_not_a_json_object_is_a_400(header):
    with pytest.raises(ServingError) as caught:
        decode_request(header + b"\0\0\0\0", len(header))
    assert caught.value.status == 400


def test_a_header_length_that_cuts_the_json_is_a_400():
    body = json_body(tensor("X", "INT8", [1], [1]))
    with pytest.raises(ServingError) as caught:
        decode_request(body, len(body) - 3)
    assert caught.value.status == 400


def test_a_bytes_element_running_past_the_end_is_refused():
    raw = struct.pack("<I", 10) + b"abc"
    body, header_length = binary_body({"inputs": [binary_input("words", "BYTES", [1], raw)]}, raw)
    assert invalid(body, header_length).message == "input 'words': BYTES element 0 of 10 bytes is truncated"


def test_bytes_data_ending_inside_a_length_prefix_is_refused():
    raw = length_prefixed(b"ok") + b"\1\0"
    body, header_length = binary_body({"inputs": [binary_input("words", "BYTES", [2], raw)]}, raw)
    assert invalid(body, header_length).message == "input 'words': BYTES data ends inside an element's length"


def test_the_classification_extension_is_refused():
    body = json_body(tensor("X", "INT8", [1], [1]), outputs=[{"name": "probs", "parameters": {"classification": 3}}])
    assert invalid(body).message == "the classification extension is not supported"


@pytest.mark.parametrize(("outputs", "message"), [
    ({"name": "probs"}, "outputs must be a list, got dict"),
    ([{"name": 1}], "each requested output must be an object with a name"),
    (["probs"], "each requested output must be an object with a name"),
    ([{"name": "probs", "parameters": 1}], "output 'probs' parameters must be a JSON object, got int"),
])
def test_requested_outputs_that_are_not_named_objects_are_refused(outputs, message):
    assert invalid(json_body(tensor("X", "INT8", [1], [1]), outputs=outputs)).message == message


# -- answers --------------------------------------------------------------------------------------
def test_json_outputs_have_flat_data_shape_and_inferred_datatype():
    result = {
        "floats": [0.5, 1.5],
        "f32": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
        "ints": [[1, 2, 3], [4, 5, 6]],
        "flags": [True, False],
        "text": ["a", "é"],
        "raw": [b"x", b"yz"],
        "score": 0.25,
        "u8": np.array([7], dtype=np.uint8),
    }
    parts, header_length = encode_response("mnist", "3", a_request(), result)
    assert header_length is None
    assert len(parts) == 1
    assert json.loads(parts[0]) == {"model_name": "mnist", "model_version": "3", "outputs": [
        {"name": "floats", "datatype": "FP64", "shape": [2], "data": [0.5, 1.5]},
        {"name": "f32", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]},
        {"name": "ints", "datatype": "INT64", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
        {"name": "flags", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "é"]},
        {"name": "raw", "datatype": "BYTES", "shape": [2], "data": ["x", "yz"]},
        {"name": "score", "datatype": "FP64", "shape": [], "data": [0.25]},
        {"name": "u8", "datatype": "UINT8", "shape": [1], "data": [7]},
    ]}


def test_declared_datatypes_cast_the_outputs():
    """MODEL_METADATA's output datatype wins over what numpy would infer."""
    parts, _ = encode_response("m", "1", a_request(), {"Y": [0.1, 0.2], "N": [1, 2], "Z": [3]},
                               declared={"Y": "FP32", "N": "INT8"})
    outputs = json.loads(parts[0])["outputs"]
    assert outputs == [
        {"name": "Y", "datatype": "FP32", "shape": [2], "data": np.array([0.1, 0.2], dtype=np.float32).tolist()},
        {"name": "N", "datatype": "INT8", "shape": [2], "data": [1, 2]},
        {"name": "Z", "datatype": "INT64", "shape": [1], "data": [3]},
    ]


def test_binary_data_output_sends_every_output_in_binary():
    result = {"f": np.array([[1.5, 2.5]], dtype=np.float32), "i": [1, -2, 3], "b": [True, False],
              "s": np.array(["hi", b"\xff\x00"], dtype=object), "e": np.zeros((0, 2), dtype=np.int16)}
    parts, header_length = encode_response("m", "1", a_request(parameters={"binary_data_output": True}), result)
    assert header_length == len(parts[0])
    header, arrays = parse_answer(parts, header_length)
    assert [(o["name"], o["datatype"], o["shape"], o["parameters"]) for o in header["outputs"]] == [
        ("f", "FP32", [1, 2], {"binary_data_size": 8}),
        ("i", "INT64", [3], {"binary_data_size": 24}),
        ("b", "BOOL", [2], {"binary_data_size": 2}),
        ("s", "BYTES", [2], {"binary_data_size": 4 + 2 + 4 + 2}),
        ("e", "INT16", [0, 2], {"binary_data_size": 0}),
    ]
    assert all("data" not in o for o in header["outputs"])
    np.testing.assert_array_equal(arrays["f"], result["f"])
    assert arrays["i"].tolist() == [1, -2, 3]
    assert arrays["b"].tolist() == [True, False]
    assert arrays["s"].tolist() == [b"hi", b"\xff\x00"]
    assert arrays["e"].shape == (0, 2)


def test_binary_outputs_are_little_endian_whatever_the_array():
    big = np.array([1, 256], dtype=">i4")
    parts, header_length = encode_response("m", "1", a_request(parameters={"binary_data_output": True}), {"v": big})
    assert b"".join(parts)[header_length:] == struct.pack("<ii", 1, 256)


def test_only_the_output_asked_in_binary_is_binary():
    """Requested outputs come in the request's order; binary_data on one output makes just that one binary."""
    result = {"a": [1.0, 2.0], "b": np.array([[1, 2], [3, 4]], dtype=np.int32), "c": ["x"]}
    request = a_request([{"name": "c"}, {"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}])
    parts, header_length = encode_response("m", "1", request, result)
    assert len(parts) == 2
    assert header_length == len(parts[0])
    header, arrays = parse_answer(parts, header_length)
    assert header["outputs"] == [
        {"name": "c", "datatype": "BYTES", "shape": [1], "data": ["x"]},
        {"name": "b", "datatype": "INT32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
        {"name": "a", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]},
    ]
    np.testing.assert_array_equal(arrays["b"], result["b"])
    assert b"".join(parts)[header_length:] == result["b"].astype("<i4").tobytes()


def test_binary_data_false_keeps_an_output_json_despite_binary_data_output():
    request = a_request([{"name": "a", "parameters": {"binary_data": False}}], parameters={"binary_data_output": True})
    parts, header_length = encode_response("m", "1", request, {"a": [1]})
    assert header_length is None
    assert json.loads(parts[0])["outputs"] == [{"name": "a", "datatype": "INT64", "shape": [1], "data": [1]}]


def test_binary_data_output_applies_to_requested_outputs_without_binary_data():
    """Triton's binary extension: binary_data_output is every output's default, binary_data on an
    output overrides it (the module's docstring says the same: "for the others")."""
    request = a_request([{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
                        parameters={"binary_data_output": True})
    parts, header_length = encode_response("m", "1", request, {"a": np.array([1.5], dtype=np.float32), "b": [2]})
    header, arrays = parse_answer(parts, header_length)
    assert header["outputs"][0] == {"name": "a", "datatype": "FP32", "shape": [1],
                                    "parameters": {"binary_data_size": 4}}
    assert header["outputs"][1] == {"name": "b", "datatype": "INT64", "shape": [1], "data": [2]}
    assert arrays["a"].tolist() == [1.5]


def test_a_declared_datatype_casts_a_binary_output_too():
    parts, header_length = encode_response("m", "1", a_request(parameters={"binary_data_output": True}),
                                           {"Y": [0.5, 0.25]}, declared={"Y": "FP16"})
    header, arrays = parse_answer(parts, header_length)
    assert header["outputs"][0]["datatype"] == "FP16"
    assert b"".join(parts)[header_length:] == np.array([0.5, 0.25], dtype="<f2").tobytes()
    assert arrays["Y"].tolist() == [0.5, 0.25]


def test_the_request_id_is_echoed_and_absent_without_one():
    with_id, _ = encode_response("m", "1", a_request(id="abc"), {"y": 1})
    without, _ = encode_response("m", "1", a_request(), {"y": 1})
    assert json.loads(with_id[0])["id"] == "abc"
    assert "id" not in json.loads(without[0])


def test_requested_outputs_filter_the_result():
    parts, _ = encode_response("m", "1", a_request([{"name": "b"}]), {"a": [1], "b": [2], "c": [3]})
    assert [o["name"] for o in json.loads(parts[0])["outputs"]] == ["b"]


def test_an_unknown_requested_output_is_invalid_input():
    with pytest.raises(InvalidInput) as caught:
        encode_response("m", "1", a_request([{"name": "a"}, {"name": "nope"}]), {"a": [1], "b": [2]})
    assert caught.value.status == 400
    assert caught.value.message == "unknown output(s) ['nope']; the model gives ['a', 'b']"


@pytest.mark.parametrize("result", [[1, 2], 3.0, "text", np.array([1.0])])
def test_a_result_that_is_not_a_dict_is_a_model_error(result):
    with pytest.raises(ModelError) as caught:
        encode_response("m", "1", a_request(), result)
    assert caught.value.status == 500
    assert "dict of output name to tensor" in caught.value.message


def test_a_none_result_is_an_answer_without_outputs():
    parts, header_length = encode_response("m", "1", a_request(), None)
    assert header_length is None
    assert json.loads(parts[0]) == {"model_name": "m", "model_version": "1", "outputs": []}


def test_bytes_that_are_not_utf8_cannot_be_sent_as_json():
    with pytest.raises(InvalidInput) as caught:
        encode_response("m", "1", a_request(), {"blob": [b"\xff\xfe"]})
    assert caught.value.status == 400
    assert "'blob'" in caught.value.message and "binary_data" in caught.value.message


def test_the_same_bytes_go_out_in_binary():
    request = a_request([{"name": "blob", "parameters": {"binary_data": True}}])
    parts, header_length = encode_response("m", "1", request, {"blob": [b"\xff\xfe"]})
    assert b"".join(parts)[header_length:] == length_prefixed(b"\xff\xfe")


@pytest.mark.parametrize(("value", "text"), [
    (np.array([{"a": 1}, {"b": 2}], dtype=object), '[{"a":1},{"b":2}]'),
    ([{"a": 1}], '[{"a":1}]'),
    ({"label": "cat", "p": 0.5}, '{"label":"cat","p":0.5}'),
    ([[1, 2], [3]], "[[1,2],[3]]"),
    ([None], "[null]"),
    (None, "null"),
    (np.array(["a", 5], dtype=object), '["a",5]'),
])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_value_that_is_no_tensor_is_one_bytes_element_holding_its_json(value, text, binary):
    """Any answer of /run can be answered over V2: dicts, lists of them, ragged rows and object
    arrays that are not all strings go out as a scalar BYTES element, their JSON."""
    request = a_request(parameters={"binary_data_output": binary})
    parts, header_length = encode_response("m", "1", request, {"out": value})
    header, arrays = parse_answer(parts, header_length)
    (out,) = header["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("out", "BYTES", [])
    assert arrays["out"].shape == ()
    assert arrays["out"].item() == text.encode()
    if binary:
        assert b"".join(parts)[header_length:] == length_prefixed(text.encode())
    else:
        assert out["data"] == [text]


@pytest.mark.parametrize("value", [[object()], {"x": float("nan")}])
def test_a_value_that_is_neither_a_tensor_nor_json_is_a_model_error(value):
    with pytest.raises(ModelError, match="'out' is neither a tensor nor JSON") as caught:
        encode_response("m", "1", a_request(), {"out": value})
    assert caught.value.status == 500


@pytest.mark.parametrize("value", [[1 + 2j], np.array(["2024-01-01"], dtype="datetime64[D]")])
def test_a_dtype_without_a_v2_datatype_is_a_model_error(value):
    with pytest.raises(ModelError, match="has no V2 datatype"):
        encode_response("m", "1", a_request(), {"out": value})


def test_nan_in_a_json_output_is_a_model_error():
    with pytest.raises(ModelError, match="not valid JSON"):
        encode_response("m", "1", a_request(), {"out": [float("nan")]})


def test_a_declared_cast_that_fails_is_a_model_error():
    with pytest.raises(ModelError, match="'out' is not a tensor of FP32"):
        encode_response("m", "1", a_request(), {"out": ["abc"]}, declared={"out": "FP32"})


def test_a_declared_integer_output_out_of_its_range_is_a_model_error():
    """A value that does not fit the declared datatype is the model's fault: a 500 that says so."""
    with pytest.raises(ModelError) as caught:
        encode_response("m", "1", a_request(), {"out": [300]}, declared={"out": "INT8"})
    assert "'out'" in caught.value.message


def test_output_names_that_are_not_strings_are_named_by_their_text():
    """A result dict keyed by numbers still answers (encode_response names each output str(key))."""
    parts, _ = encode_response("m", "1", a_request(), {0: [1.5]})
    assert json.loads(parts[0])["outputs"] == [{"name": "0", "datatype": "FP64", "shape": [1], "data": [1.5]}]


def test_an_answer_round_trips_through_a_v2_client_reading():
    """Every datatype out in binary and back is the same array."""
    result = {name: np.array([[1, 0], [0, 1]], dtype=dtype) for name, dtype in DATATYPES.items() if name != "BYTES"}
    result["BYTES"] = np.array([[b"a", b""], ["ü", b"\x00\x01"]], dtype=object)
    parts, header_length = encode_response("m", "1", a_request(parameters={"binary_data_output": True}), result)
    header, arrays = parse_answer(parts, header_length)
    assert [o["datatype"] for o in header["outputs"]] == list(DATATYPES)
    for name in result:
        assert arrays[name].dtype == DATATYPES[name]
        assert arrays[name].shape == (2, 2)
    for name in DATATYPES:
        if name != "BYTES":
            np.testing.assert_array_equal(arrays[name], result[name])
    assert arrays["BYTES"].tolist() == [[b"a", b""], ["ü".encode(), b"\x00\x01"]]


def test_to_array_and_datatype_of():
    assert to_array("x", ["a", "b"]).dtype == object
    assert datatype_of(to_array("x", ["a", "b"])) == "BYTES"
    assert datatype_of(to_array("x", [b"a"])) == "BYTES"
    assert to_array("x", [1, 2], "UINT16").dtype == np.dtype("<u2")
    assert datatype_of(np.array([], dtype=object)) == "BYTES"
    assert [datatype_of(np.zeros(1, dtype=dtype)) for name, dtype in DATATYPES.items() if name != "BYTES"] == \
        [name for name in DATATYPES if name != "BYTES"]


# -- declared inputs ------------------------------------------------------------------------------
DECLARED = [{"name": "IMG", "datatype": "FP32", "shape": [-1, 3]}, {"name": "K", "datatype": "INT64", "shape": [1]}]


def good_inputs() -> dict[str, np.ndarray]:
    return {"IMG": np.zeros((5, 3), dtype=np.float32), "K": np.array([2], dtype=np.int64)}


def test_declared_inputs_accept_any_size_where_minus_one():
    check_inputs(good_inputs(), DECLARED)
    check_inputs({**good_inputs(), "IMG": np.zeros((0, 3), dtype=np.float32)}, DECLARED)


@pytest.mark.parametrize(("change", "message"), [
    ({"IMG": np.zeros((5, 3), dtype=np.float64)}, "input 'IMG': datatype FP64, the model takes FP32"),
    ({"IMG": np.zeros(15, dtype=np.float32)}, "input 'IMG': shape [15], the model takes [-1, 3]"),
    ({"IMG": np.zeros((5, 3, 1), dtype=np.float32)}, "input 'IMG': shape [5, 3, 1], the model takes [-1, 3]"),
    ({"IMG": np.zeros((5, 4), dtype=np.float32)}, "input 'IMG': shape [5, 4], the model takes [-1, 3]"),
    ({"K": np.array([1, 2], dtype=np.int64)}, "input 'K': shape [2], the model takes [1]"),
    ({"EXTRA": np.zeros(1), "OTHER": np.zeros(1)}, "unknown input(s) ['EXTRA', 'OTHER']; the model takes ['IMG', 'K']"),
])
def test_inputs_that_do_not_match_the_declared_ones_are_refused(change, message):
    with pytest.raises(InvalidInput) as caught:
        check_inputs({**good_inputs(), **change}, DECLARED)
    assert caught.value.message == message


def test_a_missing_declared_input_is_refused():
    with pytest.raises(InvalidInput) as caught:
        check_inputs({"IMG": np.zeros((1, 3), dtype=np.float32)}, DECLARED)
    assert caught.value.message == "input 'K' is missing"


def test_accept_checks_a_request_against_the_metadata():
    metadata = ModelMetadata.of(object, {"MODEL_METADATA": {"inputs": [
        {"name": "S", "datatype": "BYTES", "shape": [-1]}, {"name": "N", "datatype": "INT32", "shape": []}]}})
    inputs, request = accept(metadata, json_body(tensor("S", "BYTES", [2], ["a", "b"]), tensor("N", "INT32", [], 3),
                                                 parameters={"p": 1}), None)
    assert inputs[PARAMETERS] == {"p": 1}
    assert inputs["S"].tolist() == [b"a", b"b"]
    assert request.inputs["N"].shape == ()
    with pytest.raises(InvalidInput, match="input 'N': datatype INT64, the model takes INT32"):
        accept(metadata, json_body(tensor("S", "BYTES", [1], ["a"]), tensor("N", "INT64", [], 3)), None)


def test_accept_without_declared_inputs_takes_anything():
    inputs, _ = accept(ModelMetadata(), json_body(tensor("Q", "UINT8", [1], [9])), None)
    assert inputs["Q"].tolist() == [9]


def test_error_body_is_the_protocols_error_object():
    assert json.loads(error_body(InvalidInput("input 'x' is missing"))) == {"error": "input 'x' is missing"}


# -- ModelMetadata --------------------------------------------------------------------------------
class Declared:
    MODEL_METADATA = {
        "platform": "numpy",
        "inputs": [{"name": "VALUES", "datatype": "FP32", "shape": [-1, 1000]}],
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}, {"name": "label", "datatype": "BYTES",
                                                                          "shape": [-1]}],
    }


class Plain:
    pass


def test_metadata_from_the_class_attribute():
    metadata = ModelMetadata.of(Declared, {})
    assert metadata.platform == "numpy"
    assert metadata.inputs == ({"name": "VALUES", "datatype": "FP32", "shape": [-1, 1000]},)
    assert metadata.output_types == {"score": "FP64", "label": "BYTES"}


def test_metadata_in_the_configuration_wins_over_the_class_attribute():
    config = {"MODEL_METADATA": {"inputs": [{"name": "X", "datatype": "INT8", "shape": [2]}]}}
    metadata = ModelMetadata.of(Declared, config)
    assert metadata.platform == "python"
    assert metadata.inputs == ({"name": "X", "datatype": "INT8", "shape": [2]},)
    assert metadata.outputs == ()
    assert metadata.output_types == {}


def test_no_metadata_anywhere_means_nothing_declared():
    metadata = ModelMetadata.of(Plain, {"OTHER": 1})
    assert (metadata.platform, metadata.inputs, metadata.outputs) == ("python", (), ())
    assert metadata.to_json("m") == {"name": "m", "platform": "python", "inputs": [], "outputs": []}


def test_metadata_none_in_the_configuration_declares_nothing():
    metadata = ModelMetadata.of(Declared, {"MODEL_METADATA": None})
    assert (metadata.platform, metadata.inputs, metadata.outputs) == ("python", (), ())


def test_metadata_to_json():
    assert ModelMetadata.of(Declared, {}).to_json("scorer") == {
        "name": "scorer", "platform": "numpy",
        "inputs": [{"name": "VALUES", "datatype": "FP32", "shape": [-1, 1000]}],
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
    }


def test_metadata_keeps_only_name_datatype_and_shape():
    raw = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "extra": "dropped"}]}
    assert ModelMetadata.of(Plain, {"MODEL_METADATA": raw}).inputs == ({"name": "X", "datatype": "FP32", "shape": [1]},)


@pytest.mark.parametrize(("raw", "message"), [
    ({"inputs": [{"name": "X", "datatype": "FP99", "shape": [1]}]}, "MODEL_METADATA.inputs.X: datatype must be one of"),
    ({"outputs": [{"name": "Y", "datatype": "BF16", "shape": [1]}]}, "MODEL_METADATA.outputs.Y: datatype must be"),
    ({"inputs": [{"name": "X", "datatype": "FP32", "shape": [-2]}]}, "MODEL_METADATA.inputs.X: shape must be"),
    ({"inputs": [{"name": "X", "datatype": "FP32", "shape": [True]}]}, "MODEL_METADATA.inputs.X: shape must be"),
    ({"inputs": [{"name": "X", "datatype": "FP32", "shape": 3}]}, "MODEL_METADATA.inputs.X: shape must be"),
    ({"inputs": [{"name": "X", "datatype": "FP32"}]}, "MODEL_METADATA.inputs.X: shape must be"),
    ({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}, {"name": "X", "datatype": "INT8", "shape": [1]}]},
     "MODEL_METADATA.inputs: 'X' is listed twice"),
    ({"inputs": [{"datatype": "FP32", "shape": [1]}]}, "MODEL_METADATA.inputs: each tensor needs a name"),
    ({"outputs": ["Y"]}, "MODEL_METADATA.outputs: each tensor needs a name"),
    ({"inputs": {"X": {}}}, "MODEL_METADATA.inputs must be a list of tensors, got dict"),
    ({"platform": "numpy", "input": []}, "MODEL_METADATA: unknown key(s) ['input']"),
    ({"platform": 3}, "MODEL_METADATA.platform must be a string, got int"),
    ([{"name": "X"}], "MODEL_METADATA must be a dict, got list"),
    ("numpy", "MODEL_METADATA must be a dict, got str"),
])
def test_bad_metadata_is_a_value_error_naming_what_is_wrong(raw, message):
    with pytest.raises(ValueError) as caught:
        ModelMetadata.of(Plain, {"MODEL_METADATA": raw})
    assert str(caught.value).startswith(message)


def test_bad_metadata_in_the_class_attribute_is_refused_too():
    class Bad:
        MODEL_METADATA = {"outputs": [{"name": "Y", "datatype": "FP32", "shape": [1, -3]}]}

    with pytest.raises(ValueError, match=r"MODEL_METADATA\.outputs\.Y: shape must be"):
        ModelMetadata.of(Bad, {})


# -- BYTES keep every byte, without numpy's fixed-width strings ------------------------------------
def test_json_bytes_inputs_keep_trailing_nuls_and_cost_no_padding():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2, 2],
                                   "data": [["a\u0000", "b"], ["c", "d"]]}]}).encode()
    assert decode_request(body).inputs["x"].tolist() == [[b"a\x00", b"b"], [b"c", b"d"]]
    long_and_many = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [20001],
                                            "data": ["x" * 20000] + [""] * 20000}]}).encode()
    array = decode_request(long_and_many).inputs["x"]
    assert array.dtype == object and array.nbytes < 1_000_000  # pointers, not 20001 x 20000 characters


@pytest.mark.parametrize(("data", "words"), [(["a", 1], "not strings"), (["\ud800"], "unpaired UTF-16 surrogate")])
def test_json_bytes_inputs_must_be_text(data, words):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [len(data)], "data": data}]}).encode()
    with pytest.raises((InvalidInput, BadRequest), match=words) as info:
        decode_request(body)
    assert info.value.status == 400


def test_bytes_elements_are_bounded_like_json_values_before_any_is_made():
    limits = JsonLimits(max_values=1000)
    count = 1001
    header = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [count],
                                     "parameters": {"binary_data_size": 4 * count}}]}).encode()
    with pytest.raises(PayloadTooLarge, match="1001 elements, more than MAX_JSON_VALUES=1000") as info:
        decode_request(header + b"\0" * (4 * count), len(header), limits)
    assert info.value.status == 413
    fits = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1000],
                                   "parameters": {"binary_data_size": 4000}}]}).encode()
    assert decode_request(fits + b"\0" * 4000, len(fits), limits).inputs["x"].shape == (1000,)


def test_bytes_elements_past_the_shape_stop_the_reading():
    header = json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": 4 * 100_000}}]}).encode()
    with pytest.raises(InvalidInput, match="needs 2 element"):
        decode_request(header + b"\0" * (4 * 100_000), len(header))


def test_bytes_outputs_keep_trailing_nuls():
    assert to_array("o", b"\x89PNG\x00\x00").tolist() == b"\x89PNG\x00\x00"
    assert to_array("o", [b"\x01\x00", b"\x02"], "BYTES").tolist() == [b"\x01\x00", b"\x02"]
    assert to_array("o", ["ab\x00"]).tolist() == ["ab\x00"]


def test_a_binary_output_is_copied_from_the_models_own_buffer():
    buffer = np.ones(4, dtype=np.float32)
    parts, _ = encode_response("m", "1", decode_request(json.dumps({"inputs": [
        {"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}], "parameters": {"binary_data_output": True}
    }).encode()), {"y": buffer})
    buffer[:] = 2  # the model reuses its buffer before the answer is sent
    assert np.frombuffer(bytes(parts[1]), dtype=np.float32).tolist() == [1.0] * 4


def test_a_shape_numpy_cannot_hold_is_a_bad_request():
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**62], "data": []}]}).encode()
    with pytest.raises(InvalidInput, match="shape"):
        decode_request(body)
