"""gateway/openapi.py: a valid OpenAPI document whose paths and methods are exactly the app's routes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from basic_inference_server.gateway.observe.openapi import openapi_document
from basic_inference_server.gateway.routing.openaipath import KIND_OF

SIGNATURES = ["dummy_model_demo1", "dummy_model_demo2"]
# Flask adds these to every route it serves; the document lists the methods a route is written for.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
JOB_OPERATIONS = {("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/{job_id}"), ("DELETE", "/jobs/{job_id}"),
                  ("GET", "/jobs/{job_id}/events"), ("POST", "/batches"), ("GET", "/batches/{batch_id}"),
                  ("GET", "/batches/{batch_id}/results")}
OPENAI_OPERATIONS = {("POST", route.decode()) for route in KIND_OF}  # in the loop too
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document(SIGNATURES, "9.9.9")


@pytest.fixture
def gateway_app(tmp_path: Path, clean_root_logging):
    from basic_inference_server.gateway.app import create_gateway_app
    from basic_inference_server.gateway.core import FlaskGateway

    gateway = FlaskGateway(config={"ADMIN_TOKEN": "unit-token-123456", "CONFIG_ENDPOINTS": {}},
                           app_root=tmp_path, run=False)
    return create_gateway_app(gateway.parts())


def served_operations(app) -> set[tuple[str, str]]:
    """The Flask app's routes, and those the HTTP front answers in its loop: POST /run, /jobs, /v1."""
    return {(method, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)) for rule in app.url_map.iter_rules()
            for method in rule.methods - IMPLICIT_METHODS} | {("POST", "/run")} | JOB_OPERATIONS | OPENAI_OPERATIONS


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item
            if method in HTTP_METHODS}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def ref_parts(ref: str) -> list[str]:
    assert ref.startswith("#/"), ref
    return ref[2:].split("/")


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in ref_parts(node["$ref"]):
            target = target[part]
        node = target
    return node


# -- a valid document ----------------------------------------------------------------------------
def test_document_is_valid_openapi_3(document):
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # the OpenAPI 3.0 meta-schema; raises on any mistake
    assert document["openapi"] == "3.0.3" and document["info"]["version"] == "9.9.9"
    assert len(list(schema.get_all_operations())) == len(documented_operations(document))
    assert json.loads(json.dumps(document)) == document  # plain JSON, as GET /openapi.json answers it


def test_a_broken_document_is_refused(document):
    broken = json.loads(json.dumps(document))
    broken["paths"]["/health"]["get"]["responses"]["200"]["headers"]["X-Request-ID"] = {"schema": 3}
    with pytest.raises(Exception, match="is not valid|is not of type"):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_reference_resolves(document):
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert found, "the document shares nothing"
    for ref in found:
        node = document
        for part in ref_parts(ref):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_operation_ids_are_unique(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))


# -- equal to the app's routes -------------------------------------------------------------------
def test_every_route_of_the_app_is_documented(gateway_app, document):
    assert served_operations(gateway_app) - documented_operations(document) == set()


def test_every_documented_operation_is_a_route_of_the_app(gateway_app, document):
    assert documented_operations(document) - served_operations(gateway_app) == set()


def test_the_app_serves_no_files(gateway_app):
    assert [rule.rule for rule in gateway_app.url_map.iter_rules() if rule.endpoint == "static"] == []


# -- what the description promises -----------------------------------------------------------------
def test_signature_is_any_string_with_the_endpoints_as_examples(document):
    run = document["paths"]["/run"]["post"]
    body = run["requestBody"]["content"]["application/json"]
    signature = resolve(document, body["schema"])["properties"]["SIGNATURE"]
    assert signature["type"] == "string" and "enum" not in signature  # any other name is a documented 404
    assert "404" in run["responses"]
    assert {e["value"]["SIGNATURE"] for e in body["examples"].values()} == {*SIGNATURES, "SYSTEM_STATUS"}


def test_signatures_are_taken_as_a_set_of_endpoint_names():
    assert openapi_document(["b", "a", "a#2", "b"], "1") == openapi_document(["a", "b"], "1")


def error_schema(path: str, status: str) -> dict[str, Any]:
    """The gateway's one error shape; under /v2 the protocol's and under /v1 OpenAI's, except what
    the HTTP front refuses before routing (413), and the readiness routes' false (400 with
    {"ready": false})."""
    if path.startswith("/v1/") and status != "413":
        return {"$ref": "#/components/schemas/OpenAIError"}
    if not path.startswith("/v2") or status == "413":
        return {"$ref": "#/components/schemas/Error"}
    if status == "400" and path.endswith(("/ready", "/health/live")):
        ready = {"ready": {"type": "boolean"}}
        if path.startswith("/v2/models/"):
            ready["name"] = {"type": "string"}
        return {"type": "object", "properties": ready, "required": list(ready)}
    return {"$ref": "#/components/schemas/V2Error"}


def test_every_answer_carries_the_request_id_and_errors_share_one_shape(document):
    for method, path, operation in operations(document):
        assert operation["parameters"][-1] == {"$ref": "#/components/parameters/RequestId"}, (method, path)
        for status, response in operation["responses"].items():
            response = resolve(document, response)
            assert "X-Request-ID" in response["headers"], (method, path, status)
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == error_schema(path, status), (path, status)
            if status == "503":
                assert "Retry-After" in response["headers"], (method, path)


def test_admin_routes_need_the_bearer_token(document):
    for path in ("/shutdown", "/kill_server", "/start_server", "/update_workers"):
        operation = document["paths"][path]["post"]
        assert operation["security"] == [{"bearerAuth": []}], path
        assert "401" in operation["responses"], path
    assert {} in document["paths"]["/support_update_status"]["post"]["security"]  # loopback needs no token
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def test_run_documents_its_streamed_answers(document):
    run = document["paths"]["/run"]["post"]
    content = run["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/event-stream", "application/x-ndjson"}
    for asked in ("`Accept: text/event-stream`", "`Accept: application/x-ndjson`", '`"STREAM": true`',
                  "predict_result is their list"):
        assert asked in run["description"]
    request = resolve(document, run["requestBody"]["content"]["application/json"]["schema"])
    assert request["properties"]["STREAM"]["type"] == "boolean" and request["required"] == ["SIGNATURE"]
    answer = resolve(document, _schema_ref("ModelAnswer"))["allOf"][1]
    assert "the list of its items" in answer["properties"]["predict_result"]["description"]
    # Server-Sent Events: the schema is one event's, as a reader parses it (and as schemathesis checks them).
    sse = content["text/event-stream"]["schema"]
    assert sse["type"] == "object" and sse["required"] == ["data"]
    assert set(sse["properties"]["event"]["enum"]) == {"message", "end", "error"}
    for framing in ("`data: <item JSON>`", "`event: end`", "`event: error`", "#/components/schemas/StreamEnd",
                    "#/components/schemas/Error"):
        assert framing in sse["description"]
    ndjson = content["application/x-ndjson"]["schema"]
    assert ndjson["type"] == "string"
    for framing in ("`<item JSON>`", '`{"END": <JSON>}`', "ERROR", "#/components/schemas/StreamEnd"):
        assert framing in ndjson["description"]


def test_streamed_examples_end_with_the_documented_keys(document):
    content = document["paths"]["/run"]["post"]["responses"]["200"]["content"]
    schemas = document["components"]["schemas"]
    end_schema = schemas["StreamEnd"]
    assert end_schema["allOf"][0] == _schema_ref("Envelope")
    required = set(end_schema["allOf"][1]["required"]) | set(schemas["Envelope"]["required"])
    assert "items" in required and "predict_result" not in end_schema["allOf"][1]["properties"]
    *items, last = content["application/x-ndjson"]["example"].splitlines()
    end = json.loads(last)["END"]
    assert set(end) == required and end["items"] == len(items) == 2
    compact = json.dumps(end, separators=(",", ":"))
    sse_example = "".join(f"data: {item}\n\n" for item in items) + f"event: end\ndata: {compact}\n\n"
    assert f"```\n{sse_example}```" in content["text/event-stream"]["schema"]["description"]


def test_dashboard_data_has_the_active_streams(document):
    data = resolve(document, _schema_ref("DashboardData"))["allOf"][1]
    assert "ACTIVE_STREAMS" in data["required"]
    assert data["properties"]["ACTIVE_STREAMS"]["additionalProperties"] == {"type": "integer", "minimum": 0}


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}
