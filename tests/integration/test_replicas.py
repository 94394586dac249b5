"""NR_REPLICAS: several model-server processes behind one SIGNATURE."""

from __future__ import annotations

import copy
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import ECHO_CONFIG


def test_replicas_share_the_load_and_cover_for_each_other(gateway_factory):
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"]["multi"] = {"SERVER_CLASS": "echo_model", "NR_WORKERS": 1, "NR_REPLICAS": 2}
    gateway = gateway_factory(config)
    servers = gateway.servers()
    assert {"multi", "multi#2"} <= set(servers)
    assert servers["multi#2"]["PORT"] != servers["multi"]["PORT"]
    assert servers["multi"]["PID"] != servers["multi#2"]["PID"]

    def call(i):
        with requests.Session() as session:
            reply = session.post(gateway.url + "/run", json={"SIGNATURE": "multi", "VALUE": i, "SLEEP": 0.2},
                                 timeout=30)
            return reply.status_code, reply.json()["predict_result"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(call, range(8)))
    assert all(status == 200 for status, _ in results)
    assert [r["echo"] for _, r in results] == list(range(8))
    assert len({r["pid"] for _, r in results}) == 2  # both processes served

    os.kill(servers["multi"]["PID"], signal.SIGKILL)
    time.sleep(0.5)  # the supervisor notices; the other replica takes every request meanwhile
    for i in range(5):
        reply = gateway.run("multi", VALUE=i)
        assert reply.status_code == 200, reply.text
        assert reply.json()["predict_result"]["pid"] == servers["multi#2"]["PID"]
    gateway.wait_state("multi", "READY", timeout=10)

    grown = gateway.admin("/update_workers", {"SIGNATURE": "multi", "NR_WORKERS": 2})
    assert grown.status_code == 200, grown.text
    killed = gateway.admin("/kill_server", {"SIGNATURE": "multi"}).json()["KILLED"]
    assert set(killed) == {"multi", "multi#2"}
    assert gateway.run("multi", VALUE=1).status_code == 503
    assert gateway.admin("/start_server", {"SIGNATURE": "multi"}).status_code == 202
    gateway.wait_state("multi#2", "READY", timeout=10)
    assert gateway.run("multi", VALUE=2).status_code == 200
