"""The Open Inference Protocol (KServe V2) routes in the gateway's OpenAPI description (:mod:`.openapi`).

Their errors are the protocol's ``{"error": "<message>"}`` (``V2Error``), except what the HTTP
front refuses before routing (a body over MAX_BODY_MB), which has the gateway's ``Error`` shape.
"""

from __future__ import annotations

from typing import Any

from ...transport.v2wire import BINARY_CONTENT_TYPE, DATATYPE_NAMES, HEADER_LENGTH
from .openapi_build import JSON, Schema, _answer, _int, _obj, _operation, _retry_after, _schema, _str

TAG = "v2"
_PATH_NAME = {"name": "name", "in": "path", "required": True, "description": "an endpoint's name",
              "schema": _str()}
_PATH_VERSION = {"name": "version", "in": "path", "required": True,
                 "description": "the endpoint's generation (1, then one more per reload or recycle); "
                                "another is a 404", "schema": _str()}
_PARAMETERS = _obj(description="key/value parameters; the request's reach _pre_process as inputs['PARAMETERS']")


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _answer(description, _schema("V2Error"), headers=headers)


def _bool_answer(key: str, extra: dict[str, Schema] | None = None) -> Schema:
    return _obj({key: {"type": "boolean"}, **(extra or {})}, [key, *(extra or {})])


def v2_schemas() -> dict[str, Schema]:
    datatype = _str("a V2 datatype", enum=list(DATATYPE_NAMES))
    shape = {"type": "array", "items": _int(minimum=0)}
    tensor_meta = _obj({"name": _str(), "datatype": datatype, "shape": {"type": "array", "items": _int(minimum=-1)}},
                       ["name", "datatype", "shape"])
    request_input = _obj({"name": _str(), "shape": shape, "datatype": datatype, "parameters": _PARAMETERS,
                          "data": {"description": "the elements, flat or nested, row-major; absent when "
                                                  "parameters.binary_data_size gives their bytes"}},
                         ["name", "shape", "datatype"])
    response_output = _obj({"name": _str(), "shape": shape, "datatype": datatype, "parameters": _PARAMETERS,
                            "data": {"type": "array", "items": {}}}, ["name", "shape", "datatype"])
    return {
        "V2Error": _obj({"error": _str()}, ["error"]),
        "V2ServerMetadata": _obj({"name": _str(), "version": _str(), "extensions": {"type": "array", "items": _str()}},
                                 ["name", "version", "extensions"]),
        "V2TensorMetadata": tensor_meta,
        "V2ModelMetadata": _obj({
            "name": _str(), "versions": {"type": "array", "items": _str()}, "platform": _str(),
            "inputs": {"type": "array", "items": _schema("V2TensorMetadata")},
            "outputs": {"type": "array", "items": _schema("V2TensorMetadata")},
        }, ["name", "platform", "inputs", "outputs"]),
        "V2InferRequest": _obj({
            "id": _str(), "parameters": _PARAMETERS,
            "inputs": {"type": "array", "minItems": 1, "items": request_input},
            "outputs": {"type": "array", "items": _obj({"name": _str(), "parameters": _PARAMETERS}, ["name"])},
        }, ["inputs"]),
        "V2InferResponse": _obj({
            "model_name": _str(), "model_version": _str(), "id": _str(), "parameters": _PARAMETERS,
            "outputs": {"type": "array", "items": response_output},
        }, ["model_name", "outputs"]),
    }


def _model_get(operation_id: str, summary: str, ok: dict[str, Any], versioned: bool,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    parameters = [_PATH_NAME, _PATH_VERSION] if versioned else [_PATH_NAME]
    return {"get": _operation(operation_id + ("Version" if versioned else ""), summary, TAG, {
        "200": ok, **(extra or {}), "404": _error("unknown model, disabled endpoint or another version"),
        "502": _error("the model server gave no metadata"),
        "503": _error("the endpoint is starting, restarting or failed", _retry_after())}, parameters=parameters)}


def _infer(versioned: bool) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary",
              "description": f"the JSON request ({HEADER_LENGTH} bytes of it), then the binary tensors"}
    body = {"required": True, "content": {JSON: {"schema": _schema("V2InferRequest")},
                                         BINARY_CONTENT_TYPE: {"schema": binary}}}
    header = {"name": HEADER_LENGTH, "in": "header", "required": False, "schema": _int(minimum=1),
              "description": "Triton's binary tensor extension: the length of the JSON at the body's start"}
    ok = _answer("the outputs, JSON; or JSON then binary tensors when some output is asked in binary",
                 _schema("V2InferResponse"))
    ok["content"][BINARY_CONTENT_TYPE] = {"schema": {
        "type": "string", "format": "binary",
        "description": f"the JSON response ({HEADER_LENGTH} bytes), then the outputs' bytes"}}
    ok["headers"][HEADER_LENGTH] = {"required": False, "schema": _int(minimum=1),
                                    "description": "present when the answer has binary tensors"}
    path_parameters = [_PATH_NAME, _PATH_VERSION] if versioned else [_PATH_NAME]
    return {"post": _operation(
        "v2Infer" + ("Version" if versioned else ""), "Run a model on V2 tensors", TAG, {
            "200": ok,
            "400": _error("not a V2 infer request: bad JSON, tensor datatype, shape or data, binary sizes, "
                          "or inputs other than the model's MODEL_METADATA"),
            "404": _error("unknown model, disabled endpoint, or another version"),
            "413": "PayloadTooLarge",
            "4XX": _error("a worker hook raised InputError with this status, or _pre_process raised (400)"),
            "500": _error("a hook raised, or an output is not a tensor"),
            "502": _error("the model server died or closed the connection while serving"),
            "503": _error("the endpoint is starting, restarting or failed, or overloaded", _retry_after()),
            "504": _error("the request did not finish within REQUEST_TIMEOUT")},
        body=body, parameters=[*path_parameters, header],
        description="The Open Inference Protocol's infer, with the same admission, metrics and request ids as "
                    "/run. Inputs reach _pre_process as numpy arrays by name, with the request's parameters "
                    "as 'PARAMETERS'; what _post_process returns (a dict of name to tensor) is the outputs.")}


def v2_paths() -> dict[str, Any]:
    metadata = _answer("the model's name, versions, platform and tensors (MODEL_METADATA)",
                       _schema("V2ModelMetadata"))
    ready = _answer("ready", _bool_answer("ready", {"name": _str()}))
    not_ready = _answer("the endpoint is starting, restarting or failed", _bool_answer("ready", {"name": _str()}))
    paths: dict[str, Any] = {
        "/v2": {"get": _operation("v2ServerMetadata", "Server metadata", TAG, {
            "200": _answer("name, version and extensions", _schema("V2ServerMetadata"))})},
        "/v2/health/live": {"get": _operation("v2Live", "The gateway is live", TAG, {
            "200": _answer("live", _bool_answer("live"))})},
        "/v2/health/ready": {"get": _operation("v2Ready", "Every started server is READY", TAG, {
            "200": _answer("ready", _bool_answer("ready")),
            "400": _answer("some server is not READY, or the gateway is shutting down", _bool_answer("ready"))})},
    }
    for versioned in (False, True):
        base = "/v2/models/{name}" + ("/versions/{version}" if versioned else "")
        paths[base] = _model_get("v2ModelMetadata", "A model's metadata", metadata, versioned)
        paths[base + "/ready"] = _model_get("v2ModelReady", "A model is ready", ready, versioned,
                                            {"400": not_ready})
        paths[base + "/infer"] = _infer(versioned)
    paths.update(_shm_paths())
    return paths


def _shm_paths() -> dict[str, Any]:
    """The system shared-memory extension (ALLOW_CLIENT_SHM, loopback clients only)."""
    region = {"name": "name", "in": "path", "required": True, "description": "the region's name", "schema": _str()}
    status = _answer("the regions registered", {"type": "array", "items": _obj(
        {"name": _str(), "key": _str(), "offset": _int(minimum=0), "byte_size": _int(minimum=0)},
        ["name", "key", "offset", "byte_size"])})
    done = _answer("done", _obj())
    off = _error("ALLOW_CLIENT_SHM is off, or the client is not on this host (loopback)")
    body = {"required": True, "content": {JSON: {"schema": _obj(
        {"key": _str("the POSIX shared-memory segment, '/name' in /dev/shm"), "offset": _int(minimum=0),
         "byte_size": _int(minimum=0)}, ["key", "byte_size"])}}}
    base = "/v2/systemsharedmemory"
    return {
        f"{base}/status": {"get": _operation("v2ShmStatus", "Every shared-memory region registered", TAG,
                                             {"200": status, "403": off})},
        f"{base}/region/{{name}}/status": {"get": _operation(
            "v2ShmRegionStatus", "A shared-memory region", TAG,
            {"200": status, "403": off, "404": _error("no such region")}, parameters=[region])},
        f"{base}/region/{{name}}/register": {"post": _operation(
            "v2ShmRegister", "Register a shared-memory region", TAG,
            {"200": done, "400": _error("a bad name or key, no such segment, or past its end"), "403": off},
            body=body, parameters=[region])},
        f"{base}/unregister": {"post": _operation("v2ShmUnregisterAll", "Unregister every region", TAG,
                                                  {"200": done, "403": off})},
        f"{base}/region/{{name}}/unregister": {"post": _operation(
            "v2ShmUnregister", "Unregister a shared-memory region", TAG, {"200": done, "403": off},
            parameters=[region])},
    }
