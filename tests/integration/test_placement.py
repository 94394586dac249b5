"""_load_shared, WARMUP_INPUTS and DEVICES through real model servers."""

from __future__ import annotations

from conftest import FIXTURES

FILES = [FIXTURES / "endpoints" / "placed_model.py"]


def test_workers_share_one_copy_loaded_once_per_process(gateway_factory):
    gateway = gateway_factory({"CONFIG_ENDPOINTS": {"placed": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 4}}},
                              FILES)
    answers = [gateway.run("placed", VALUE=i).json()["predict_result"] for i in range(24)]
    assert len({a["pid"] for a in answers}) == 1
    assert len({a["shared_id"] for a in answers}) == 1  # every worker holds the same object
    assert {a["shared_loads"] for a in answers} == {1}  # loaded once for the 4 workers
    assert all(a["shared_at_load"] for a in answers)  # already there in _load_model


def test_warmup_runs_every_worker_before_ready(gateway_factory):
    config = {"CONFIG_ENDPOINTS": {"placed": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 2,
                                              "WARMUP_INPUTS": [{"VALUE": "w1"}, {"VALUE": "w2"}]},
                                   "placed_batch": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 1,
                                                    "MAX_BATCH_SIZE": 4, "WARMUP_INPUTS": [{"VALUE": "w"}] * 3}}}
    gateway = gateway_factory(config, FILES)
    first = gateway.run("placed", VALUE=1).json()["predict_result"]
    assert first["calls_before"] == 2  # both warmup inputs went through this worker's hooks
    servers = gateway.servers()
    assert all(s["STATE"] == "READY" for s in servers.values())
    batched = gateway.run("placed_batch", VALUE=1).json()
    assert batched["predict_result"]["calls_before"] == 1  # three warmup inputs, one batch


def test_a_failing_warmup_or_shared_load_fails_the_endpoint_with_the_reason(gateway_factory):
    config = {"CONFIG_ENDPOINTS": {
        "warm_fail": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 1, "FAIL_ON": "bad",
                      "WARMUP_INPUTS": [{"VALUE": "good"}, {"VALUE": "bad"}]},
        "shared_fail": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 1, "FAIL_SHARED": True},
        "fine": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 1}}}
    gateway = gateway_factory(config, FILES, wait_ready=False)
    warm = gateway.wait_state("warm_fail", "FAILED", timeout=30)
    assert "WARMUP_INPUTS[1] failed: cannot take VALUE 'bad'" in warm["ERROR"]
    shared = gateway.wait_state("shared_fail", "FAILED", timeout=30)
    assert "_load_shared failed: OSError: weights file models/missing.bin not found" in shared["ERROR"]
    gateway.wait_state("fine", "READY", timeout=30)
    assert gateway.run("fine", VALUE=1).status_code == 200
    assert gateway.run("warm_fail", VALUE=1).status_code == 503


def test_devices_place_each_replica(gateway_factory):
    config = {"CONFIG_ENDPOINTS": {"placed": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 2, "NR_REPLICAS": 3,
                                              "DEVICES": ["cuda:1", "cpu"]},
                                   "unplaced": {"SERVER_CLASS": "placed_model", "NR_WORKERS": 1}}}
    # The gateway's own allocation is GPUs 4 and 5: cuda:1 is GPU 5.
    gateway = gateway_factory(config, FILES, env={"CUDA_VISIBLE_DEVICES": "4,5"})
    servers = gateway.servers()
    by_pid = {}
    for _ in range(12):  # the idle replicas take turns: each answers some
        result = gateway.run("placed", VALUE=1).json()["predict_result"]
        by_pid[result["pid"]] = result
    seen = {}
    for name in ("placed", "placed#2", "placed#3"):
        result = by_pid[servers[name]["PID"]]
        seen[name] = (servers[name]["DEVICE"], result["physical_device"], result["device"], result["visible"])
    assert seen == {"placed": ("cuda:1", "cuda:1", "cuda:0", "5"),
                    "placed#2": ("cpu", "cpu", "cpu", ""),
                    "placed#3": ("cuda:1", "cuda:1", "cuda:0", "5")}
    unplaced = gateway.run("unplaced", VALUE=1).json()["predict_result"]
    assert (servers["unplaced"]["DEVICE"], unplaced["device"], unplaced["visible"]) == (None, None, "4,5")


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def test_large_arrays_of_a_model_do_not_fault_in_fresh_pages_every_request(gateway_factory):
    """The model server keeps glibc's adaptive threshold: a model's 320 KB arrays are reused heap
    blocks after the first request, not a fresh mapping each (80 page faults apiece, 1,280 per
    request here, and milliseconds of kernel time, as when the threshold was fixed at 128 KB)."""
    gateway = gateway_factory({"CONFIG_ENDPOINTS": {"big": {"SERVER_CLASS": "big_arrays", "NR_WORKERS": 1}}},
                              [FIXTURES / "endpoints" / "big_arrays.py"])
    for _ in range(5):
        assert gateway.run("big", VALUE=1).status_code == 200
    pid = gateway.servers()["big"]["PID"]
    before = _minor_faults(pid)
    for _ in range(20):
        assert gateway.run("big", VALUE=1).json()["predict_result"] == {"y": 2.99609375}
    assert (_minor_faults(pid) - before) / 20 < 200
