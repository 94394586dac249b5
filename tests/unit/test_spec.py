"""server/spec.py: the one typed spec a model server is started with, parsed strictly."""

from __future__ import annotations

import dataclasses
import json

import pytest

from basic_inference_server.server.spec import ServerSpec, SpecError


def spec(**changes) -> ServerSpec:
    base = dict(
        name="demo#2", server_class="demo", host="127.0.0.1", port=5004, socket_path="/tmp/x/5004.sock",
        nr_workers=2, max_queue=64, server_threads=16, request_timeout=60.0, stream_idle_timeout=60.0,
        stream_timeout=600.0, max_batch_size=1,
        max_batch_wait_ms=5.0, endpoint_config={"WEIGHT": 2, "NESTED": {"A": [1]}}, app_root="/app",
        workers_location="endpoints", workers_suffix="Worker", execution_path="/run", cache_folder="/app/_cache",
        host_id="h0042", admin_token=None, max_body_bytes=1024, max_json_values=100,
        max_json_containers=10, max_json_depth=4, shutdown_grace=10.0, error_file="/app/e",
    )
    base.update(changes)
    return ServerSpec(**base)


def test_round_trip_is_equal():
    original = spec(admin_token="secret-token-1234")
    again = ServerSpec.from_json(original.to_json())
    assert again == original
    assert dict(again.endpoint_config) == {"WEIGHT": 2, "NESTED": {"A": [1]}}


def test_integer_values_of_float_fields_are_floats():
    data = json.loads(spec().to_json())
    data["request_timeout"] = 5
    parsed = ServerSpec.from_json(json.dumps(data))
    assert parsed.request_timeout == 5.0 and isinstance(parsed.request_timeout, float)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ServerSpec)])
def test_every_field_is_required(field):
    data = json.loads(spec().to_json())
    del data[field]
    with pytest.raises(SpecError, match=f"missing field.*{field}"):
        ServerSpec.from_json(json.dumps(data))


def test_unknown_fields_are_refused():
    data = {**json.loads(spec().to_json()), "nr_wrokers": 3}
    with pytest.raises(SpecError, match="unknown field.*nr_wrokers"):
        ServerSpec.from_json(json.dumps(data))


@pytest.mark.parametrize(("field", "value"), [
    ("port", "5004"), ("port", True), ("nr_workers", 2.5), ("request_timeout", "60"), ("admin_token", 12),
    ("endpoint_config", [1]), ("name", None),
])
def test_wrong_types_are_refused(field, value):
    data = {**json.loads(spec().to_json()), field: value}
    with pytest.raises(SpecError, match=field):
        ServerSpec.from_json(json.dumps(data))


def test_not_json_and_not_an_object_are_refused():
    with pytest.raises(SpecError, match="not JSON"):
        ServerSpec.from_json("{oops")
    with pytest.raises(SpecError, match="JSON object"):
        ServerSpec.from_json("[1]")
