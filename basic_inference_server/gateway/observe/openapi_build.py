"""Small builders of the gateway's OpenAPI description, shared by :mod:`.openapi` and
:mod:`.openapi_v2`."""

from __future__ import annotations

from typing import Any

JSON = "application/json"

Schema = dict[str, Any]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _obj(properties: dict[str, Schema] | None = None, required: list[str] | None = None, **extra: Any) -> Schema:
    """An object schema; other keys are allowed unless ``additionalProperties`` says otherwise."""
    schema: Schema = {"type": "object", "properties": properties or {}}
    if required:
        schema["required"] = required
    schema.update(extra)
    return schema


def _str(description: str | None = None, **extra: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def _int(**extra: Any) -> Schema:
    return {"type": "integer", **extra}


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _map(values: Schema) -> Schema:
    """An object keyed by names (endpoints, support processes, call ids)."""
    return {"type": "object", "additionalProperties": values}


def _with_envelope(schema: Schema) -> Schema:
    return {"allOf": [_schema("Envelope"), schema]}


def _answer(description: str, schema: Schema | None = None, media_type: str = JSON,
            headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response; every answer of the gateway carries ``X-Request-ID``."""
    response: dict[str, Any] = {"description": description,
                                "headers": {"X-Request-ID": _ref("headers", "RequestId"), **(headers or {})}}
    if schema is not None:
        response["content"] = {media_type: {"schema": schema}}
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _answer(description, _schema("Error"), headers=headers)


def _body(schema: Schema, required: bool = True, examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"required": required, "content": {JSON: media}}


def _operation(operation_id: str, summary: str, tag: str, responses: dict[str, Any], *,
               body: dict[str, Any] | None = None, parameters: list[Any] | None = None,
               security: list[dict[str, list[str]]] | None = None, description: str | None = None) -> dict[str, Any]:
    """An operation; ``responses`` values are answers or the names of shared responses."""
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "parameters": [*(parameters or []), _ref("parameters", "RequestId")],
        "responses": {code: _ref("responses", r) if isinstance(r, str) else r for code, r in responses.items()},
    }
    if description:
        operation["description"] = description
    if body is not None:
        operation["requestBody"] = body
    if security is not None:
        operation["security"] = security
    return operation


def _request_id() -> Schema:
    return _str(pattern="^[A-Za-z0-9._:-]{1,128}$")  # what requestid.accept takes from a client


def _retry_after() -> dict[str, Any]:
    return {"Retry-After": _ref("headers", "RetryAfter")}
