"""Many clients at once: every answer correct, none lost, none duplicated."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests


def test_200_requests_from_20_threads_each_get_their_own_answer(echo_gateway):
    def call(i: int) -> tuple[int, int, dict]:
        with requests.Session() as session:
            signature = "echo" if i % 2 else "echo_b"
            # 10 ms each: 20 clients at once keep both workers busy (an idle worker runs what it reads
            # itself, so answers faster than the clients ask would all go to one)
            reply = session.post(echo_gateway.url + "/run", json={"SIGNATURE": signature, "VALUE": f"v{i}",
                                                                  "SLEEP": 0.01}, timeout=30)
            return i, reply.status_code, reply.json()

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(call, range(200)))

    assert len(results) == 200
    assert all(status == 200 for _, status, _ in results), [r for r in results if r[1] != 200][:3]
    assert all(body["predict_result"]["echo"] == f"v{i}" for i, _, body in results)
    # call ids are per server: no duplicates within a server means no answer was given twice
    for signature_part in ("echo_model.EchoModelWorker",):
        ids_by_server: dict[str, list[int]] = {}
        for _, _, body in results:
            assert signature_part in body["signature"]
            ids_by_server.setdefault(body["predict_result"]["prefix"], []).append(body["call_id"])
        assert set(ids_by_server) == {"e1", "e2"}
        for ids in ids_by_server.values():
            assert len(ids) == len(set(ids)) == 100
    # both workers of the 2-worker endpoint took part
    workers = {body["worker_id"] for _, _, body in results if body["predict_result"]["prefix"] == "e1"}
    assert len(workers) == 2
