"""Tensors of the Open Inference Protocol (KServe "V2") to numpy and back, JSON or binary.

An infer request is a JSON object (``id``, ``parameters``, ``inputs``, ``outputs``); each input
names its ``datatype`` and ``shape`` and carries its elements as ``data`` (a flat or nested
list, row-major). Triton's binary tensor extension, which ``tritonclient`` uses by default, puts
the JSON first and raw tensors after it::

    HTTP header  Inference-Header-Content-Length: <n>   (the JSON's size; absent: all JSON)
    body         <n bytes of JSON> <input 0's bytes> <input 1's bytes> ...

An input whose ``parameters`` hold ``binary_data_size`` has no ``data``: its elements are that
many bytes of the binary part, in the order of the inputs, little-endian, one byte per BOOL, and
for BYTES each element as a 4-byte little-endian length followed by its bytes. Answers use the
same layout for the outputs asked for in binary (an output's ``parameters.binary_data``, or the
request's ``parameters.binary_data_output`` for the others). Binary inputs are numpy views of
the request's own bytes (read-only, no copy).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import jsonutil
from ..errors import InvalidInput, ModelError, PayloadTooLarge
from ..jsonbody import DEFAULT_LIMITS, JsonLimits, loads_object
from .sysshm import SHM_REGION, SHM_SIZE, shm_place
from .v2wire import DATATYPE_NAMES, HEADER_LENGTH

_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix

# The protocol's datatypes and the numpy dtypes they travel as (BF16 has no numpy dtype).
DATATYPES: dict[str, np.dtype] = dict(zip(DATATYPE_NAMES, (
    np.dtype(np.bool_),
    np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<u8"),
    np.dtype("<i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<i8"),
    np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8"),
    np.dtype(object),
), strict=True))
_BY_KIND_SIZE = {(dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items() if name != "BYTES"}
# What a JSON list may hold for each kind of datatype (numpy's kind of the list as parsed).
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf", "O": "U"}
PARAMETERS = "PARAMETERS"  # the key of the request's parameters in the worker's inputs


class RequestedOutput:
    __slots__ = ("binary", "name", "shm")

    def __init__(self, name: str, binary: bool, shm: tuple[str, int, int] | None = None):
        self.name = name
        self.binary = binary
        self.shm = shm  # (region, offset, byte size): written into a client's shared memory (sysshm)


class InferRequest:
    """A decoded infer request: ``inputs`` maps each input's name to its array."""

    __slots__ = ("binary_output", "id", "inputs", "outputs", "parameters")

    def __init__(self, request_id: str | None, parameters: dict[str, Any], inputs: dict[str, np.ndarray],
                 outputs: list[RequestedOutput] | None, binary_output: bool):
        self.id = request_id
        self.parameters = parameters
        self.inputs = inputs
        self.outputs = outputs  # None: every output, binary when binary_output
        self.binary_output = binary_output

    def answering(self) -> InferRequest:
        """What its answer needs (its id, parameters and requested outputs), without its inputs:
        carried from a V2 pipeline's first step to its last."""
        return InferRequest(self.id, self.parameters, {}, self.outputs, self.binary_output)

    def worker_inputs(self) -> dict[str, Any]:
        """What ``_pre_process`` receives: ``{<input name>: ndarray, ..., "PARAMETERS": {...}}``."""
        return {**self.inputs, PARAMETERS: self.parameters}


def decode_request(body: bytes, header_length: int | None = None, limits: JsonLimits = DEFAULT_LIMITS,
                   regions: Any = None) -> InferRequest:
    """Parse an infer request (all JSON, or JSON then binary tensors); InvalidInput when it is not
    one. Its JSON is bounded by ``limits``, and so are its BYTES elements, each a Python object:
    all of them together at most ``limits.max_values`` (413 past it, before any is made). An input
    may name a registered shared-memory region (``regions``: :class:`.sysshm.Regions`, None when the
    extension is off) instead of carrying its data."""
    view = memoryview(body)
    if header_length is None:
        header, binary = body, view[len(body):]
    else:
        if not 0 < header_length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
        header, binary = view[:header_length].tobytes(), view[header_length:]
    request = loads_object(header, limits)
    parameters = _object(request.get("parameters", {}), "parameters")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, got {type(request_id).__name__}")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = elements = 0
    for raw in raw_inputs:
        name, datatype, shape = _tensor_head(raw)
        if datatype == "BYTES":
            elements += math.prod(shape)
            if elements > limits.max_values:
                raise PayloadTooLarge(f"input {name!r}: the BYTES inputs hold {elements} elements, more than "
                                      f"MAX_JSON_VALUES={limits.max_values} (a setting of the gateway's configuration)")
        if name in inputs or name == PARAMETERS:
            raise InvalidInput(f"input {name!r} is given twice" if name in inputs else
                               f"{PARAMETERS!r} cannot be an input's name")
        tensor_parameters = _object(raw.get("parameters", {}), f"input {name!r} parameters")
        region = tensor_parameters.get(SHM_REGION)
        if region is not None:
            start, length = shm_place(name, tensor_parameters, regions)
            inputs[name] = _from_binary(name, datatype, shape, regions.read(region, start, length))
            continue
        size = tensor_parameters.get("binary_data_size")
        if size is None:
            if "data" not in raw:
                raise InvalidInput(f"input {name!r} has neither data nor parameters.binary_data_size")
            inputs[name] = _from_json(name, datatype, shape, raw["data"])
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be an integer >= 0, got {size!r}")
        if offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary data truncated: {size} bytes announced at offset {offset}, "
                               f"{len(binary) - offset} left in the body")
        inputs[name] = _from_binary(name, datatype, shape, binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes after the last binary input: the body does not match "
                           "the inputs' binary_data_size")
    binary_output = parameters.get("binary_data_output") is True
    return InferRequest(request_id, {k: v for k, v in parameters.items() if k != "binary_data_output"},
                        inputs, _requested(request.get("outputs"), binary_output, regions), binary_output)


def check_inputs(inputs: Mapping[str, np.ndarray], declared: list[dict[str, Any]]) -> None:
    """InvalidInput unless the inputs are exactly the declared ones, each of its datatype and shape
    (-1: any size)."""
    wanted = {tensor["name"]: tensor for tensor in declared}
    unknown = sorted(set(inputs) - set(wanted))
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; the model takes {sorted(wanted)}")
    for name, tensor in wanted.items():
        array = inputs.get(name)
        if array is None:
            raise InvalidInput(f"input {name!r} is missing")
        datatype = datatype_of(array)
        if datatype != tensor["datatype"]:
            raise InvalidInput(f"input {name!r}: datatype {datatype}, the model takes {tensor['datatype']}")
        shape = tensor["shape"]
        if len(shape) != array.ndim or any(d not in (-1, n) for d, n in zip(shape, array.shape, strict=True)):
            raise InvalidInput(f"input {name!r}: shape {list(array.shape)}, the model takes {shape}")


def encode_response(model_name: str, model_version: str, request: InferRequest, result: Any,
                    declared: Mapping[str, str] | None = None, regions: Any = None) -> tuple[list[Any], int | None]:
    """The answer to ``request`` from what ``_post_process`` returned (a dict of output name to
    array, list or scalar; ``declared``: output name -> datatype to cast to). Returns the body's
    pieces and the JSON header's length when some output is binary (None: the body is all JSON)."""
    if result is None:
        result = {}
    if not isinstance(result, Mapping):
        raise ModelError(f"a V2 answer needs _post_process to return a dict of output name to tensor, "
                         f"got {type(result).__name__}")
    result = {str(name): value for name, value in result.items()}
    if request.outputs is None:
        wanted = [RequestedOutput(name, request.binary_output) for name in result]
    else:
        missing = [o.name for o in request.outputs if o.name not in result]
        if missing:
            raise InvalidInput(f"unknown output(s) {missing}; the model gives {sorted(result)}")
        wanted = request.outputs
    outputs, parts = [], []
    for out in wanted:
        array = to_array(out.name, result[out.name], (declared or {}).get(out.name))
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": list(array.shape)}
        if out.shm is not None:  # written into the client's region, which the answer names
            region, offset, size = out.shm
            data = _to_binary(array)
            regions.write(region, offset, data, size)
            tensor["parameters"] = {SHM_REGION: region, SHM_SIZE: len(data)}
        elif out.binary:
            part = _to_binary(array)
            tensor["parameters"] = {"binary_data_size": len(part)}
            parts.append(part)
        else:
            tensor["data"] = _to_json_data(out.name, array)
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = outputs
    try:
        header = jsonutil.dumps_bytes(answer)
    except ValueError as exc:
        raise ModelError(f"an output is not valid JSON: {exc}") from None
    return [header, *parts], (len(header) if parts else None)


def to_array(name: str, value: Any, datatype: str | None = None) -> np.ndarray:
    """An output as an array: strings and bytes as BYTES, ``datatype`` (declared) cast to. A value
    that is no tensor (a dict, a list of them, rows of different lengths) is one BYTES element
    holding its JSON, so that any answer of ``/run`` can be answered over V2 too."""
    try:
        if datatype is not None and datatype != "BYTES":
            return np.asarray(value, dtype=DATATYPES[datatype])
        if isinstance(value, Mapping):
            array = None
        elif _first_leaf(value).__class__ in (str, bytes):  # as objects: no padding, NULs kept
            array = np.asarray(value, dtype=object)
        else:
            array = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        if datatype is not None:
            raise ModelError(f"output {name!r} is not a tensor of {datatype}: {exc}") from None
        array = None
    if array is not None and array.dtype.kind in "US":
        return array.astype(object)
    if array is None or (array.dtype.kind == "O" and not all(isinstance(e, (str, bytes)) for e in array.flat)):
        try:
            array = np.empty((), dtype=object)
            array[()] = jsonutil.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"output {name!r} is neither a tensor nor JSON: {exc}") from None
    if datatype == "BYTES" and array.dtype.kind != "O":
        raise ModelError(f"output {name!r} is declared BYTES in MODEL_METADATA, got {datatype_of(array)}")
    return array


def _first_leaf(value: Any) -> Any:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return value


def datatype_of(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind in "OUS":
        first = next(iter(array.flat), b"")
        if isinstance(first, (str, bytes)):
            return "BYTES"
        raise ModelError(f"a tensor of {type(first).__name__} has no V2 datatype")
    name = _BY_KIND_SIZE.get((kind, array.dtype.itemsize))
    if name is None:
        raise ModelError(f"numpy dtype {array.dtype} has no V2 datatype")
    return name


# -- inputs -------------------------------------------------------------------------------------
def _tensor_head(raw: Any) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"each input must be a JSON object, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("each input needs a name (a non-empty string)")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}; expected one of {list(DATATYPES)}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers >= 0, got {shape!r}")
    return name, datatype, tuple(shape)


def _from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_json(name, shape, count, data)
    try:
        parsed = np.asarray(data if isinstance(data, list) else [data])
    except ValueError:
        raise InvalidInput(f"input {name!r}: data is not a regular array (rows of different lengths)") from None
    if parsed.size != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} element(s), data has {parsed.size}")
    dtype = DATATYPES[datatype]
    if datatype == "UINT64" and parsed.dtype.kind in "fO":  # integers past INT64 parse as floats
        parsed = _big_integers(name, data) if isinstance(data, list) else parsed
    if count and parsed.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise InvalidInput(f"input {name!r}: data does not match datatype {datatype} "
                           f"(got {_json_kind_name(parsed.dtype.kind)})")
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        low, high = parsed.min(), parsed.max()
        if low < info.min or high > info.max:
            raise InvalidInput(f"input {name!r}: values {low}..{high} do not fit {datatype}")
    return _reshaped(name, parsed.astype(dtype, copy=False), shape)


def _reshaped(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError as exc:  # e.g. a dimension numpy cannot hold, beside a zero
        raise InvalidInput(f"input {name!r}: shape {list(shape)}: {exc}") from None


def _bytes_from_json(name: str, shape: tuple[int, ...], count: int, data: Any) -> np.ndarray:
    """BYTES elements as an object array of ``bytes``, built element by element (numpy's fixed-width
    strings would pad every element to the longest and drop trailing NUL characters)."""
    flat: list[Any] = []
    pending = [data] if isinstance(data, list) else [[data]]
    while pending:  # flatten the nesting, row-major, without recursion
        items = pending.pop()
        for index, item in enumerate(items):
            if isinstance(item, list):
                pending.append(items[index + 1:])
                pending.append(item)
                break
            flat.append(item)
    if len(flat) != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} element(s), data has {len(flat)}")
    if not all(type(item) is str for item in flat):
        raise InvalidInput(f"input {name!r}: data does not match datatype BYTES (got values that are not strings)")
    array = np.empty(count, dtype=object)
    try:
        array[:] = [item.encode("utf-8") for item in flat]
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"input {name!r}: a BYTES element is not valid text: {exc.reason}") from None
    return _reshaped(name, array, shape)


def _big_integers(name: str, data: list[Any]) -> np.ndarray:
    """UINT64 data with values past INT64's: numpy reads them as floats, so read them as Python ints."""
    shape = np.asarray(data, dtype=object).shape
    flat = np.asarray(data, dtype=object).reshape(-1).tolist()
    if not all(type(v) is int for v in flat):
        return np.asarray(data)
    if any(v < 0 or v >= 1 << 64 for v in flat):
        raise InvalidInput(f"input {name!r}: values {min(flat)}..{max(flat)} do not fit UINT64")
    return np.array(flat, dtype=np.uint64).reshape(shape)


def _from_binary(name: str, datatype: str, shape: tuple[int, ...], data: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(name, shape, count, data)
    dtype = DATATYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} "
                           f"bytes, binary_data_size is {len(data)}")
    return _reshaped(name, np.frombuffer(data, dtype=dtype), shape)


def _bytes_elements(name: str, shape: tuple[int, ...], count: int, data: memoryview) -> np.ndarray:
    elements: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end and len(elements) <= count:
        if offset + 4 > end:
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element's length")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + size > end:
            raise InvalidInput(f"input {name!r}: BYTES element {len(elements)} of {size} bytes is truncated")
        elements.append(data[offset:offset + size].tobytes())
        offset += size
    if len(elements) != count:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {count} element(s), data has {len(elements)}")
    array = np.empty(count, dtype=object)
    array[:] = elements
    return _reshaped(name, array, shape)


def _requested(raw: Any, binary_default: bool, regions: Any = None) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f"outputs must be a list, got {type(raw).__name__}")
    outputs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each requested output must be an object with a name")
        parameters = _object(item.get("parameters", {}), f"output {item['name']!r} parameters")
        if parameters.get("classification"):
            raise InvalidInput("the classification extension is not supported")
        binary = parameters.get("binary_data", binary_default)  # the output's own choice, else the request's
        shm = None
        if parameters.get(SHM_REGION) is not None:
            offset, size = shm_place(item["name"], parameters, regions)
            shm = (str(parameters[SHM_REGION]), offset, size)
        outputs.append(RequestedOutput(item["name"], binary is True, shm))
    return outputs


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _json_kind_name(kind: str) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}.get(kind, "mixed values")


# -- outputs ------------------------------------------------------------------------------------
def _to_binary(array: np.ndarray) -> Any:
    if array.dtype.kind == "O":
        pieces = []
        for element in array.flat:
            raw = element.encode("utf-8") if isinstance(element, str) else bytes(element)
            pieces += (_LENGTH.pack(len(raw)), raw)
        return b"".join(pieces)
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    if np.may_share_memory(little, array):  # the model's own buffer, maybe reused before it is sent
        return little.tobytes()
    return memoryview(little.reshape(-1)).cast("B") if little.size else b""


def _to_json_data(name: str, array: np.ndarray) -> list[Any]:
    flat = array.reshape(-1)
    if array.dtype.kind != "O":
        return flat.tolist()
    data = []
    for element in flat:
        if isinstance(element, bytes):
            try:
                element = element.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"output {name!r} holds bytes that are not UTF-8: ask for it in binary "
                                   "(binary_data)") from None
        data.append(element)
    return data
