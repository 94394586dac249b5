"""The OpenAPI description against a live demo gateway: schemathesis sends what the document
allows (and what it forbids) and checks every answer against it.

Bounded and reproducible for CI: a fixed seed, derandomized generation, at most
``MAX_EXAMPLES`` generated cases per operation (plus schemathesis's examples and coverage
cases), one request timeout. A failure prints the case as a curl command to replay.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from basic_inference_server.gateway.observe.openapi import openapi_document
from basic_inference_server.transport.streamformat import NDJSON_TYPE, SSE_TYPE


def _harness() -> Any:
    """This folder's conftest.py (the Gateway harness). Not `from conftest import ...`: when pytest
    is given files of tests/unit and tests/integration at once, that name is tests/unit's conftest."""
    spec = importlib.util.spec_from_file_location("integration_harness", Path(__file__).with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _harness()

SEED = 20261122
MAX_EXAMPLES = 30
DEMO_FILES = ["dummy_model_demo1.py", "dummy_model_demo2.py", "support_process.py"]
DEMO_INPUTS = {"dummy_model_demo1": {"INPUT_VALUE": "casa", "LANGUAGE": "ro"}, "dummy_model_demo2": {"INPUT_VALUE": 3}}
CHECKS = [
    not_a_server_error,  # no 5xx: no case here should reach a model error, a timeout or a dead server
    status_code_conformance,  # every status is documented for its operation
    content_type_conformance,
    response_schema_conformance,  # every body matches the documented schema
    response_headers_conformance,  # X-Request-ID on every answer, Retry-After on every 503
    unsupported_method,  # a method the document does not list answers 405 with Allow
    allow_header_conformance,  # OPTIONS advertises exactly the documented methods (plus HEAD, OPTIONS)
]
# Routes being wired into the gateway right now: while one answers 404 it is left out.


@pytest.fixture(scope="module")
def demo_gateway(tmp_path_factory: pytest.TempPathFactory):
    """The shipped demo (two models, a support process), as `make run` starts it."""
    app = tmp_path_factory.mktemp("openapi") / "app"
    (app / "endpoints").mkdir(parents=True)
    for name in DEMO_FILES:
        shutil.copy(harness.REPO / "endpoints" / name, app / "endpoints" / name)
    shutil.copy(harness.REPO / "config_gateway.txt", app / "config_gateway.txt")
    gateway = harness.Gateway(app).start()
    yield gateway
    gateway.stop()
    gateway.assert_nothing_left()


def document_for(gateway: Any) -> dict:
    """What GET /openapi.json answers, built from the signatures the gateway lists."""
    signatures = list(gateway.get("/list_servers").json()["AVAIL_SERVERS"])
    return openapi_document(signatures, gateway.get("/health").json()["ver-lib"])


def test_served_document_is_the_function_output(demo_gateway):
    served = demo_gateway.get("/openapi.json")
    assert served.status_code == 200, served.text
    assert served.headers["Content-Type"].startswith("application/json")
    document = served.json()
    signatures = list(demo_gateway.get("/list_servers").json()["AVAIL_SERVERS"])
    assert document == openapi_document(signatures, document["info"]["version"])


@schemathesis.serializer(NDJSON_TYPE)
def _ndjson(_ctx, value):
    """POST /batches: the text generated for its NDJSON body, sent as it is (a string, or the
    JSON of anything else)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(value).encode()


@pytest.fixture(scope="module")
def gateway_schema(demo_gateway):
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": demo_gateway.url,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none", "mode": "all"},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 20,
    })
    # Admin routes run without a token: schemathesis cannot get past their 401 (or the 400/413 of a
    # body that is not a JSON object), so /shutdown and /kill_server "*" cannot stop the system under
    # test, while the token check, the error shape and the 405s of these routes are still exercised.
    # Their answers with the token are covered by test_lifecycle, test_supervision and test_replicas.
    return schemathesis.openapi.from_dict(with_demo_inputs(document_for(demo_gateway)), config=config)


def with_demo_inputs(document: dict) -> dict:
    """The document plus /run examples with the demo models' inputs, so that schemathesis also
    gets real predictions through the gateway (the document itself cannot know a model's inputs),
    plain and streamed (``"STREAM": true``: Server-Sent Events, each event checked)."""
    examples = document["paths"]["/run"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    for name, value in DEMO_INPUTS.items():
        examples[f"{name} with inputs"] = {"value": {"SIGNATURE": name, **value}}
        examples[f"{name} streamed"] = {"value": {"SIGNATURE": name, **value, "STREAM": True}}
    return document


schema = schemathesis.pytest.from_fixture("gateway_schema")


@pytest.mark.timeout(180)  # a bound for CI; a normal run takes 15-25 s
@schema.parametrize()
def test_gateway_answers_as_documented(case):
    case.call_and_validate(checks=CHECKS)


@pytest.mark.parametrize(("headers", "extra", "media_type"), [
    ({"Accept": SSE_TYPE}, {}, SSE_TYPE),
    ({"Accept": NDJSON_TYPE}, {}, NDJSON_TYPE),
    ({}, {"STREAM": True}, SSE_TYPE),
], ids=["accept-sse", "accept-ndjson", "stream-flag"])
def test_streamed_answers_are_documented(gateway_schema, headers, extra, media_type):
    """A demo model (a plain value: a stream of one item) asked for a stream answers the
    documented media type; schemathesis checks each Server-Sent Event against the document."""
    operation = gateway_schema["/run"]["POST"]
    body = {"SIGNATURE": "dummy_model_demo2", **DEMO_INPUTS["dummy_model_demo2"], **extra}
    case = operation.Case(body=body, headers=headers, media_type="application/json")
    response = case.call()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == [media_type]
    case.validate_response(response, checks=CHECKS)
    if media_type == NDJSON_TYPE:  # schemathesis reads no NDJSON: the framing, as documented
        lines = response.text.split("\n")
        assert lines[-1] == "" and [set(json.loads(line)) for line in lines[:-1]] == [{"dummy_model_predict"}, {"END"}]
        assert json.loads(lines[1])["END"]["items"] == 1
    else:
        item, end, rest = response.text.split("\n\n")
        assert item.startswith("data: ") and end.startswith("event: end\ndata: ") and rest == ""
        assert json.loads(end.removeprefix("event: end\ndata: "))["items"] == 1
