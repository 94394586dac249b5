"""The Open Inference Protocol (KServe V2) in a model server: a model's metadata, and infer
requests from the gateway turned into worker inputs and their answers into V2 answers.

An endpoint describes its tensors (optional) with ``MODEL_METADATA``, in its ``_CONFIG``, its
entry of ``config_gateway.txt``, or as a class attribute of its worker::

    MODEL_METADATA = {
        "platform": "numpy",
        "inputs": [{"name": "VALUES", "datatype": "FP32", "shape": [-1, 1000]}],
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]}],
    }

Declared inputs are checked (names, datatypes, shapes; -1 is any size) before a worker sees a
request, and declared outputs are cast to their datatype. Without it every input is accepted and
each output's datatype is numpy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import jsonutil
from ..errors import ServingError
from ..jsonbody import DEFAULT_LIMITS, JsonLimits
from ..transport import v2codec

METADATA_KEY = "MODEL_METADATA"
DEFAULT_PLATFORM = "python"


@dataclass(frozen=True)
class ModelMetadata:
    platform: str = DEFAULT_PLATFORM
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, worker_cls: type, config: Mapping[str, Any]) -> ModelMetadata:
        """The endpoint's metadata: its configuration's ``MODEL_METADATA``, else the class
        attribute; ValueError naming what is wrong."""
        raw = config.get(METADATA_KEY, getattr(worker_cls, METADATA_KEY, None))
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError(f"{METADATA_KEY} must be a dict, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {"platform", "inputs", "outputs"})
        if unknown:
            raise ValueError(f"{METADATA_KEY}: unknown key(s) {unknown} (expected platform, inputs, outputs)")
        platform = raw.get("platform", DEFAULT_PLATFORM)
        if not isinstance(platform, str):
            raise ValueError(f"{METADATA_KEY}.platform must be a string, got {type(platform).__name__}")
        return cls(platform, _tensors(raw.get("inputs", []), "inputs"), _tensors(raw.get("outputs", []), "outputs"))

    def to_json(self, name: str) -> dict[str, Any]:
        return {"name": name, "platform": self.platform, "inputs": list(self.inputs), "outputs": list(self.outputs)}

    @property
    def output_types(self) -> dict[str, str]:
        return {tensor["name"]: tensor["datatype"] for tensor in self.outputs}


def _tensors(raw: Any, what: str) -> tuple[dict[str, Any], ...]:
    where = f"{METADATA_KEY}.{what}"
    if not isinstance(raw, list):
        raise ValueError(f"{where} must be a list of tensors, got {type(raw).__name__}")
    tensors, names = [], set()
    for tensor in raw:
        if not isinstance(tensor, Mapping) or not isinstance(tensor.get("name"), str) or not tensor["name"]:
            raise ValueError(f"{where}: each tensor needs a name, got {tensor!r}")
        name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
        if name in names:
            raise ValueError(f"{where}: {name!r} is listed twice")
        if datatype not in v2codec.DATATYPES:
            raise ValueError(f"{where}.{name}: datatype must be one of {list(v2codec.DATATYPES)}, got {datatype!r}")
        if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < -1 for d in shape):
            raise ValueError(f"{where}.{name}: shape must be a list of integers (-1: any size), got {shape!r}")
        names.add(name)
        tensors.append({"name": name, "datatype": datatype, "shape": list(shape)})
    return tuple(tensors)


class V2Call:
    """What a call of a V2 infer request needs for its answer: the model and version it was routed
    to, its JSON header's length, and the request once a worker has read its body."""

    __slots__ = ("header_length", "model", "request", "version")

    def __init__(self, model: str, version: str, header_length: int | None):
        self.model = model  # the model's name, as the gateway routed it
        self.version = version
        self.header_length = header_length  # Inference-Header-Content-Length (None: all JSON)
        self.request: v2codec.InferRequest | None = None


def accept(metadata: ModelMetadata, body: bytes, header_length: int | None,
           limits: JsonLimits = DEFAULT_LIMITS, regions: Any = None) -> tuple[dict[str, Any], v2codec.InferRequest]:
    """The worker inputs of an infer request, checked against the declared inputs (``regions``: the
    client's shared memory, :class:`..transport.sysshm.Regions`, None when ALLOW_CLIENT_SHM is off)."""
    request = v2codec.decode_request(body, header_length, limits, regions)
    if metadata.inputs:
        v2codec.check_inputs(request.inputs, list(metadata.inputs))
    return request.worker_inputs(), request


def error_body(exc: ServingError) -> bytes:
    """The protocol's error object."""
    return jsonutil.dumps_bytes({"error": exc.message})
