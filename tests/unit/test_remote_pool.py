"""gateway/remote/pool.py: a slow DNS server holds back neither the other host names nor the
health probes, and a lookup that answers late is used by a later round."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.gateway.remote import pool as pool_module
from basic_inference_server.gateway.remote.handle import RemoteState
from basic_inference_server.gateway.remote.pool import RemoteEndpoints
from basic_inference_server.gateway.routing.routes import RouteTable


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "READY", "name": "echo", "workers": {"ready": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def slow_dns(monkeypatch):
    """``slow.example`` answers 127.0.0.2 once ``answer`` is set; ``fast.example`` is 127.0.0.1 at once."""
    answer = threading.Event()

    def resolve(host, port):
        if host == "slow.example":
            answer.wait(10)
            return ["127.0.0.2"]
        return ["127.0.0.1"]

    monkeypatch.setattr(pool_module, "resolve", resolve)
    monkeypatch.setattr(pool_module, "RESOLVE_TIMEOUT", 0.2)
    yield answer
    answer.set()


def remote(tmp_path, port: int) -> RemoteEndpoints:
    config = parse_config({"CONFIG_ENDPOINTS": {"echo": {
        "URLS": [f"http://slow.example:{port}", f"http://fast.example:{port}"]}}}, tmp_path)
    return RemoteEndpoints(config.endpoints, RouteTable())


def test_a_slow_lookup_fails_its_round_only_and_is_used_when_it_answers(tmp_path, slow_dns, caplog):
    endpoints = remote(tmp_path, 5003)
    try:
        endpoints.resolve_all()
        assert sorted(endpoints.addresses["echo"]) == [("127.0.0.1", 5003)]  # fast.example did not wait
        assert "cannot resolve http://slow.example:5003: no answer from DNS within 0.2s" in caplog.text
        assert [h.address for h in endpoints.table.routes.servers["echo"]] == ["127.0.0.1:5003"]
        slow_dns.set()
        endpoints.resolve_all()  # the lookup still running from the last round has its answer now
        assert sorted(endpoints.addresses["echo"]) == [("127.0.0.1", 5003), ("127.0.0.2", 5003)]
    finally:
        endpoints.stop()


def test_probes_go_on_while_dns_hangs(tmp_path, slow_dns, health_server):
    endpoints = remote(tmp_path, health_server)
    try:
        endpoints.start()
        assert endpoints.wait_ready(["echo"], timeout=5)  # probed while slow.example has not answered
        [handle] = endpoints.handles()
        assert (handle.host, handle.state) == ("127.0.0.1", RemoteState.READY)
        assert handle.workers == {"ready": 1}
    finally:
        endpoints.stop()
