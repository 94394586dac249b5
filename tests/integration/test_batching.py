"""Dynamic batching through real processes: grouping, per-item answers, per-item failures."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import requests
from conftest import ECHO_CONFIG


def batch_config(**extra) -> dict:
    config = copy.deepcopy(ECHO_CONFIG)
    config["CONFIG_ENDPOINTS"]["batched"] = {"SERVER_CLASS": "batch_model", "NR_WORKERS": 1,
                                             "MAX_BATCH_SIZE": 8, "MAX_BATCH_WAIT_MS": 30, **extra}
    return config


def concurrent_runs(gateway, payloads):
    def call(payload):
        with requests.Session() as session:
            return session.post(gateway.url + "/run", json={"SIGNATURE": "batched", **payload}, timeout=30)

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        return list(pool.map(call, payloads))


def test_concurrent_requests_are_grouped_and_each_gets_its_own_answer(gateway_factory):
    gateway = gateway_factory(batch_config())
    replies = concurrent_runs(gateway, [{"VALUE": i} for i in range(24)])
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    results = [r.json()["predict_result"] for r in replies]
    assert [r["value"] for r in results] == list(range(24))
    assert max(r["batch"] for r in results) > 1
    assert all(r["batch"] <= 8 for r in results)
    # A lone request still works (a batch of one after the wait window).
    assert gateway.run("batched", VALUE="solo").json()["predict_result"] == {"value": "solo", "batch": 1}


def test_a_bad_item_fails_alone_but_a_failing_predict_fails_its_batch(gateway_factory):
    gateway = gateway_factory(batch_config(MAX_BATCH_WAIT_MS=200))
    payloads = [{"VALUE": 1}, {"NO_VALUE": True}, {"VALUE": 3, "FAIL_POST": True}, {"VALUE": 4}]
    replies = concurrent_runs(gateway, payloads)
    assert [r.status_code for r in replies] == [200, 400, 500, 200]
    assert replies[1].json()["error"]["type"] == "InvalidInput"
    assert "post failed for this item" in replies[2].json()["ERROR"]
    broken = concurrent_runs(gateway, [{"VALUE": 1}, {"VALUE": 2, "BREAK_BATCH": True}])
    assert [r.status_code for r in broken] == [500, 500]
    assert all("batch exploded" in r.json()["ERROR"] for r in broken)
    assert gateway.run("batched", VALUE=5).status_code == 200
