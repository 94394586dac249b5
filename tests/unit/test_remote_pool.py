"""gateway/remote/pool.py: a slow DNS server holds back neither the other host names nor the
health probes, and a lookup that answers late is used by a later round."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.gateway.remote import pool as pool_module
from basic_inference_server.gateway.remote.handle import RemoteState
from basic_inference_server.gateway.remote.pool import RemoteEndpoints
from basic_inference_server.gateway.routing.routes import RouteTable


class Health(BaseHTTPRequestHandler):
    status = "READY"  # what every server of this kind answers

    def do_GET(self):
        body = json.dumps({"status": Health.status, "name": "echo", "workers": {"ready": 1}}).encode()
        self.send_response(200 if Health.status == "READY" else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    Health.status = "READY"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


class SlowDns:
    """``fast.example`` is 127.0.0.1 at once; ``slow.example`` is 127.0.0.2, at once until
    ``hang`` is set, then only once ``answer`` is set."""

    def __init__(self):
        self.hang, self.answer = threading.Event(), threading.Event()

    def resolve(self, host, port):
        if host == "slow.example" and self.hang.is_set():
            self.answer.wait(10)
        return ["127.0.0.2"] if host == "slow.example" else ["127.0.0.1"]


@pytest.fixture
def slow_dns(monkeypatch):
    dns = SlowDns()
    monkeypatch.setattr(pool_module, "resolve", dns.resolve)
    monkeypatch.setattr(pool_module, "RESOLVE_TIMEOUT", 0.2)
    yield dns
    dns.answer.set()


def remote(tmp_path, port: int) -> RemoteEndpoints:
    config = parse_config({"CONFIG_ENDPOINTS": {"echo": {
        "URLS": [f"http://slow.example:{port}", f"http://fast.example:{port}"]}}}, tmp_path)
    return RemoteEndpoints(config.endpoints, RouteTable())


def test_a_slow_lookup_fails_its_round_only_and_is_used_when_it_answers(tmp_path, slow_dns, caplog):
    endpoints = remote(tmp_path, 5003)
    slow_dns.hang.set()
    try:
        endpoints.resolve_all()
        assert sorted(endpoints.addresses["echo"]) == [("127.0.0.1", 5003)]  # fast.example did not wait
        assert "cannot resolve http://slow.example:5003: no answer from DNS within 0.2s" in caplog.text
        assert [h.address for h in endpoints.table.routes.servers["echo"]] == ["127.0.0.1:5003"]
        slow_dns.answer.set()
        endpoints.resolve_all()  # the lookup still running from the last round has its answer now
        assert sorted(endpoints.addresses["echo"]) == [("127.0.0.1", 5003), ("127.0.0.2", 5003)]
    finally:
        endpoints.stop()


def test_probes_go_on_while_dns_hangs(tmp_path, slow_dns, health_server, monkeypatch):
    endpoints = remote(tmp_path, health_server)
    try:
        slow_dns.hang.set()  # slow.example never answers
        endpoints.start()
        assert endpoints.wait_ready(["echo"], timeout=5)  # fast.example's address, found and probed
        monkeypatch.setattr(pool_module, "RESOLVE_TIMEOUT", 8.0)
        time.sleep(pool_module.RESOLVE_INTERVAL + 0.5)  # a resolving round has begun its 8 s wait
        Health.status = "DRAINING"
        [handle] = endpoints.handles()
        deadline = time.monotonic() + 2  # four probe intervals, well inside that round
        while handle.state is not RemoteState.DRAINING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.state is RemoteState.DRAINING  # probed while DNS hangs
    finally:
        endpoints.stop()


def test_urls_turning_to_https_start_again_from_new_addresses(tmp_path, slow_dns):
    def config(scheme: str):
        return parse_config({"CONFIG_ENDPOINTS": {"echo": {"URLS": f"{scheme}://fast.example:5003"}}},
                            tmp_path).endpoints

    endpoints = RemoteEndpoints(config("http"), RouteTable())
    try:
        endpoints.resolve_all()
        [plain] = endpoints.handles()
        assert plain.tls is None and plain.key == "http://127.0.0.1:5003"
        endpoints.configure(config("https"))  # its connections must not be reused for TLS
        [secure] = endpoints.handles()
        assert secure is not plain and secure.tls is not None and secure.http.tls is secure.tls
        assert (secure.key, secure.server_name, secure.source) == (
            "https://127.0.0.1:5003#fast.example", "fast.example", "https://fast.example:5003")
        assert plain.http.closed
    finally:
        endpoints.stop()
