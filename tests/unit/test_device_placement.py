"""server/placement.py: which device a replica gets and what its process is told."""

from __future__ import annotations

import pytest

from basic_inference_server.server.placement import device_of, local_device, visible_devices, warmup_inputs


def test_replicas_take_the_devices_in_turn():
    devices = ("cuda:0", "cuda:1", "cpu")
    assert [device_of(devices, i) for i in range(5)] == ["cuda:0", "cuda:1", "cpu", "cuda:0", "cuda:1"]
    assert device_of((), 3) == ""


@pytest.mark.parametrize(("device", "visible", "local"), [
    ("cuda:1", "1", "cuda:0"), ("cuda:0", "0", "cuda:0"), ("cuda:12", "12", "cuda:0"), ("cpu", "", "cpu"),
    ("", None, None)])
def test_a_process_sees_its_own_gpu_only(device, visible, local):
    assert visible_devices(device) == visible
    assert local_device(device) == local


def test_warmup_inputs_drop_control_keys():
    config = {"WARMUP_INPUTS": [{"SIGNATURE": "x", "VALUE": 1, "STREAM": True}]}
    assert warmup_inputs(config) == [{"VALUE": 1}]
    assert warmup_inputs({}) == []


def test_cuda_n_counts_among_the_gpus_the_gateway_may_use():
    assert visible_devices("cuda:0", "2,3") == "2"
    assert visible_devices("cuda:1", " 2, 3 ") == "3"
    assert visible_devices("cuda:5", "2,3") == "5"  # past the allocation: the index as it is
    assert visible_devices("cpu", "2,3") == ""
