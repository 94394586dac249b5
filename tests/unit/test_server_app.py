"""server/app.py and server/httpfast.py: the model server's routes, over real HTTP on a loopback port
served by the front its process serves (``serve_http``: ``/run`` in the event loop, the rest by Flask)."""

from __future__ import annotations

import re

import pytest
import requests
from gccheck import cyclic_garbage

from basic_inference_server import FlaskWorker
from basic_inference_server.server.app import ServerState
from basic_inference_server.server.httpfast import serve_http
from basic_inference_server.server.notifications import GENERAL, NotificationStore
from basic_inference_server.server.runpath import RunPath
from basic_inference_server.transport.httpmsg import FrontLimits

TOKEN = "admin-secret-1234"


class AppWorker(FlaskWorker):
    def _pre_process(self, inputs):
        if "INPUT_VALUE" not in inputs:
            raise ValueError("INPUT_VALUE should be defined in inputs")
        return inputs

    def _predict(self, inputs):
        self._create_notification(notif="log", msg=f"predicting {inputs['INPUT_VALUE']!r}")
        if inputs.get("MODE") == "unserialisable":
            return {"obj": object()}
        return {"inputs": sorted(inputs), "double": inputs["INPUT_VALUE"] * 2}


class Client:
    """requests against one server's port: ``post(path, json=..., data=..., content_type=...)``."""

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()

    def post(self, path, json=None, data=None, content_type=None, headers=None):
        headers = dict(headers or {})
        if content_type:
            headers["Content-Type"] = content_type
        return self.session.post(self.url + path, json=json, data=data, headers=headers, timeout=10)

    def get(self, path, headers=None):
        return self.session.get(self.url + path, headers=headers, timeout=10)


def loading_until(gate):
    """A worker class whose _load_model waits for ``gate`` (at most 5 s)."""

    class SlowLoader(AppWorker):
        def _load_model(self):
            gate.wait(5)

    return SlowLoader


@pytest.fixture
def server(kit):
    """Serve a model server's port over a pool of ``n`` workers; returns (state, client)."""
    fronts = []

    def build(n=2, worker_cls=AppWorker, admin_token=None, max_body_bytes=1024, wait=True, token=None):
        notifications = NotificationStore()
        pool = kit.pool(
            lambda idx: worker_cls(worker_id=idx, notifications=notifications),
            8,
            on_event=lambda text: notifications.add(GENERAL, "log", "ModelServer", text),
        )
        state = ServerState(
            name="demo", server_class="demo", class_name=worker_cls.__name__, host_id="h0042", pool=pool,
            notifications=notifications, request_timeout=2.0, max_body_bytes=max_body_bytes,
            admin_token=admin_token,
        )
        pool.start(n)
        if wait:
            assert pool.wait_loaded(2)
        http = serve_http(state, RunPath(state), "127.0.0.1", 0, token=token, threads=4,
                          limits=FrontLimits(max_body=max_body_bytes))
        fronts.append(http)
        http.start()
        return state, Client(f"http://127.0.0.1:{http.port}")

    yield build
    for http in fronts:
        http.close()


def assert_error(response, status, error_type):
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"]["type"] == error_type
    assert body["ERROR"] == body["error"]["message"]
    return body


# -- /run --------------------------------------------------------------------------------------
def test_run_happy_path(server):
    _, client = server()
    first = client.post("/run", json={"SIGNATURE": "demo", "INPUT_VALUE": 3})
    second = client.post("/run", json={"SIGNATURE": "demo", "INPUT_VALUE": 4})
    assert first.status_code == 200
    body = first.json()
    assert body["predict_result"] == {"inputs": ["INPUT_VALUE"], "double": 6}
    assert body["call_id"] == 1
    assert second.json()["call_id"] == 2
    match = re.fullmatch(r"h0042\.demo\.AppWorker\.(\d+)", body["signature"])
    assert match, body["signature"]
    assert match.group(1) in ("0", "1")
    assert body["worker_id"] == f"h0042:{match.group(1)}"


def test_percent_encoded_run_path_is_run(server):
    _, client = server()
    response = client.post("/%72un", json={"SIGNATURE": "demo", "INPUT_VALUE": 5})
    assert response.status_code == 200
    assert response.json()["predict_result"]["double"] == 10


def test_routed_signature_that_the_body_does_not_name_is_421(server):
    _, client = server()
    body = {"SIGNATURE": "other", "INPUT_VALUE": 1}
    assert_error(client.post("/run", json=body, headers={"X-Routed-Signature": "demo"}), 421, "Misrouted")
    body["SIGNATURE"] = "demo"
    assert client.post("/run", json=body, headers={"X-Routed-Signature": "demo"}).status_code == 200


def test_the_token_guards_every_route_but_health(server):
    _, client = server(token="s3cret-token")
    assert_error(client.post("/run", json={"INPUT_VALUE": 1}), 401, "Unauthorized")
    wrong = client.post("/run", json={"INPUT_VALUE": 1}, headers={"X-Endpoint-Token": "s3cret-tokeN"})
    assert_error(wrong, 401, "Unauthorized")
    right = client.post("/run", json={"INPUT_VALUE": 1}, headers={"X-Endpoint-Token": "s3cret-token"})
    assert right.status_code == 200
    for path in ("/stats", "/notifications", "/get_paths", "/v2/models/demo"):
        assert_error(client.get(path), 401, "Unauthorized")
        assert client.get(path, headers={"X-Endpoint-Token": "s3cret-token"}).status_code == 200, path
    assert_error(client.post("/update_workers", json={"NR_WORKERS": 1}), 401, "Unauthorized")
    assert_error(client.get("/stats", headers={"X-Endpoint-Token": "s3cret-token\u00e9"}), 401, "Unauthorized")
    assert client.get("/health").status_code == 200  # probes need no secret


def test_answered_requests_leave_no_cycles_for_the_collector(server):
    """A request's objects are freed by their reference counts: cyclic garbage would make Python's
    collector run every few requests, and each of its passes stalls every request in flight."""
    _, client = server()
    assert client.post("/run", json={"INPUT_VALUE": 0}).status_code == 200

    def requests() -> None:
        for value in range(20):
            assert client.post("/run", json={"INPUT_VALUE": value}).status_code == 200
            streamed = client.post("/run", json={"INPUT_VALUE": value}, headers={"Accept": "application/x-ndjson"})
            assert streamed.status_code == 200 and streamed.text.count("\n") == 2  # the item, then the end
            # Refused by a worker: the error it keeps must not keep the frames that raised it (and
            # the body in them) through a cycle only the collector frees.
            assert client.post("/run", data=b'{"INPUT_VALUE": [' + b"[]," * 200 + b"1e400]}").status_code == 400
            assert client.post("/run", json={"MODE": "no INPUT_VALUE"}).status_code == 400

    kinds = cyclic_garbage(requests)
    assert not kinds & {"Job", "_Call", "StreamOut", "HttpRequest", "Responder", "frame", "traceback"}, sorted(kinds)


def test_refused_requests_leave_no_cycles_either(server, kit):
    _, client = server(n=1, worker_cls=loading_until(kit.gate()), wait=False)

    def requests() -> None:
        for value in range(5):  # no worker is ready: 503 before the queue
            assert client.post("/run", json={"INPUT_VALUE": value}).status_code == 503
            streamed = client.post("/run", json={"INPUT_VALUE": value}, headers={"Accept": "application/x-ndjson"})
            assert streamed.status_code == 503

    kinds = cyclic_garbage(requests)
    assert not kinds & {"Job", "_Call", "StreamOut"}, kinds


def test_control_keys_are_not_model_inputs(server):
    _, client = server()
    response = client.post("/run", json={"SIGNATURE": "demo", "TOKEN": "t", "BASE64_KEYS": [], "ENCODING": "x",
                                         "BASE64_OUTPUTS": [], "INPUT_VALUE": 1, "LANGUAGE": "en"})
    assert response.json()["predict_result"]["inputs"] == ["INPUT_VALUE", "LANGUAGE"]


def test_run_without_body_is_400(server):
    _, client = server()
    body = assert_error(client.post("/run"), 400, "BadRequest")
    assert "Request body is empty" in body["ERROR"]


@pytest.mark.parametrize("data", [b"[1, 2]", b"{oops", b'"text"'])
def test_run_with_non_object_body_is_400(server, data):
    _, client = server()
    assert_error(client.post("/run", data=data, content_type="application/json"), 400, "BadRequest")


def test_pre_process_error_is_400_with_message(server):
    _, client = server()
    body = assert_error(client.post("/run", json={"SIGNATURE": "demo"}), 400, "InvalidInput")
    assert body["ERROR"] == "INPUT_VALUE should be defined in inputs"


def test_body_over_the_limit_is_413(server):
    _, client = server(max_body_bytes=100)
    response = client.post("/run", json={"SIGNATURE": "demo", "INPUT_VALUE": "x" * 200})
    body = assert_error(response, 413, "PayloadTooLarge")
    assert "100 bytes" in body["ERROR"]
    assert client.post("/run", json={"INPUT_VALUE": 1}).status_code == 200


def test_unserialisable_result_is_500_and_server_keeps_serving(server):
    _, client = server()
    body = assert_error(client.post("/run", json={"INPUT_VALUE": 1, "MODE": "unserialisable"}), 500, "ModelError")
    assert "not JSON-serialisable" in body["ERROR"]
    assert "Traceback" not in body["ERROR"]
    again = client.post("/run", json={"INPUT_VALUE": 2})
    assert again.status_code == 200
    assert again.json()["predict_result"]["double"] == 4


def test_slow_request_is_504(server, kit):
    gate = kit.gate()

    class Slow(AppWorker):
        def _predict(self, inputs):
            if inputs.get("WAIT"):
                gate.wait(5)
            return super()._predict(inputs)

    state, client = server(n=1, worker_cls=Slow)
    state.request_timeout = 0.1
    body = assert_error(client.post("/run", json={"INPUT_VALUE": 1, "WAIT": True}), 504, "Timeout")
    assert "REQUEST_TIMEOUT" in body["ERROR"]
    gate.set()
    state.request_timeout = 2.0
    assert client.post("/run", json={"INPUT_VALUE": 1}).status_code == 200


def test_draining_server_refuses_new_requests(server):
    state, client = server()
    state.draining = True
    response = client.post("/run", json={"INPUT_VALUE": 1})
    assert_error(response, 503, "ServerUnavailable")
    assert response.headers["Retry-After"] == "1"
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "DRAINING"


def test_get_on_run_is_405_json(server):
    _, client = server()
    response = client.get("/run", headers={"X-Request-ID": "get-on-run-1"})
    body = assert_error(response, 405, "MethodNotAllowed")
    assert "POST" in response.headers["Allow"]
    assert body["error"]["request_id"] == response.headers["X-Request-ID"] == "get-on-run-1"


def test_unknown_route_is_404_json(server):
    _, client = server()
    assert_error(client.post("/predict", json={}), 404, "NotFound")


def test_get_paths(server):
    _, client = server()
    assert client.get("/get_paths").json() == {"PATHS": ["/run", "/notifications", "/update_workers"]}


# -- /health -----------------------------------------------------------------------------------
def test_health_when_ready(server):
    _, client = server(n=2)
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "READY"
    assert body["name"] == "demo"
    assert body["workers"]["total"] == 2
    assert body["workers"]["ready"] == 2
    assert body["workers"]["loading"] == 0
    assert "errors" not in body


def test_health_is_503_until_models_are_loaded(server, kit):
    gate = kit.gate()
    state, client = server(n=1, worker_cls=loading_until(gate), wait=False)
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "LOADING"
    assert response.json()["workers"]["loading"] == 1
    assert_error(client.post("/run", json={"INPUT_VALUE": 1}), 503, "ServerUnavailable")
    gate.set()
    assert state.pool.wait_loaded(2)
    assert client.get("/health").status_code == 200


def test_health_waits_for_every_worker_not_just_the_first(server, kit):
    gate = kit.gate()

    class SecondIsSlow(AppWorker):
        def _load_model(self):
            if self.worker_id == 1:
                gate.wait(5)

    state, client = server(n=2, worker_cls=SecondIsSlow, wait=False)
    assert kit.wait_until(lambda: state.pool.stats()["ready"] == 1)
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["workers"]["loading"] == 1
    gate.set()
    assert state.pool.wait_loaded(2)
    assert client.get("/health").status_code == 200


def test_health_shows_load_errors(server):
    class HalfBroken(AppWorker):
        def _load_model(self):
            if self.worker_id == 1:
                raise MemoryError("not enough GPU memory")

    _, client = server(n=2, worker_cls=HalfBroken)
    body = client.get("/health").json()
    assert body["errors"] == ["worker 1: MemoryError: not enough GPU memory"]
    assert body["workers"]["failed"] == 1


# -- /update_workers ---------------------------------------------------------------------------
def test_update_workers_requires_the_admin_token(server):
    state, client = server(admin_token=TOKEN)
    assert_error(client.post("/update_workers", json={"NR_WORKERS": 3}), 401, "Unauthorized")
    wrong = client.post("/update_workers", json={"NR_WORKERS": 3}, headers={"Authorization": "Bearer nope-nope"})
    assert_error(wrong, 401, "Unauthorized")
    assert state.pool.stats()["total"] == 2


def test_update_workers_with_bearer_token_grows_the_pool(server):
    state, client = server(n=1, admin_token=TOKEN)
    response = client.post("/update_workers", json={"NR_WORKERS": 3}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    body = response.json()
    assert (body["MESSAGE"], body["NR_WORKERS"], body["PREVIOUS"]) == ("OK", 3, 1)
    assert state.pool.wait_loaded(2)
    assert client.get("/health").json()["workers"]["ready"] == 3


def test_update_workers_with_token_in_body(server):
    state, client = server(n=1, admin_token=TOKEN)
    response = client.post("/update_workers", json={"NR_WORKERS": 2, "TOKEN": TOKEN})
    assert response.status_code == 200
    assert state.pool.wait_loaded(2)
    assert state.pool.stats()["ready"] == 2


@pytest.mark.parametrize("count", ["3", 0, -1, 2.0, True, None, 257])
def test_update_workers_rejects_bad_counts(server, count):
    state, client = server(n=1)
    body = assert_error(client.post("/update_workers", json={"NR_WORKERS": count}), 400, "BadRequest")
    assert body["ERROR"].startswith("NR_WORKERS: expected an integer between 1 and 256")
    assert state.pool.stats()["total"] == 1


# -- /notifications ----------------------------------------------------------------------------
def test_notifications_are_drained(server):
    _, client = server()
    call_id = client.post("/run", json={"INPUT_VALUE": 7}).json()["call_id"]
    first = client.get("/notifications")
    assert first.status_code == 200
    body = first.json()
    assert [n["NOTIF"] for n in body[str(call_id)]] == ["predicting 7"]
    assert [n["NOTIF"] for n in body[GENERAL]] == ["Resizing workers: 0 -> 2"]
    assert client.post("/notifications").json() == {GENERAL: []}
