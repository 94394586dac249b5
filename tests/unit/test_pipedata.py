"""The values passed between pipeline steps (transport.pipedata) and pipeline entries
(pipeconfig): arrays out of band, shared memory from the threshold, joins, and the
configuration's mistakes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from basic_inference_server.pipeconfig import parse_pipelines
from basic_inference_server.settings import ConfigError
from basic_inference_server.transport import pipedata


def body_of(parts) -> bytes:
    return b"".join(bytes(part) for part in parts)


def memfds() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:bis-pipeline")
               for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))


def test_arrays_travel_out_of_band_and_come_back_as_read_only_arrays():
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    parts, fds = pipedata.encode({"image": image, "label": "cat", "raw": b"\x00\x01"})
    assert fds == [] and any(part.nbytes == image.nbytes for part in parts if isinstance(part, memoryview))
    value = pipedata.decode(bytearray(body_of(parts)))
    assert value["label"] == "cat" and value["raw"] == b"\x00\x01"
    assert value["image"].dtype == np.uint8 and np.array_equal(value["image"], image)
    assert not value["image"].flags.writeable


def test_a_buffer_from_the_threshold_goes_through_a_memfd_freed_once_released_and_unmapped(monkeypatch):
    monkeypatch.setattr(pipedata._POOL, "IDLE_S", 0.2)
    frame = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    before = memfds()
    parts, fds = pipedata.encode({"frame": frame, "small": np.arange(3)}, shm_at=65536)
    assert len(fds) == 1 and len(body_of(parts)) < 4096  # the 6 MB are not in the body
    value = pipedata.decode(body_of(parts))
    pipedata.release(fds)  # the producer lets go (kept a moment for the next value, then closed)
    assert np.array_equal(value["frame"], frame) and not value["frame"].flags.writeable
    again, fds = pipedata.encode({"frame": frame[::-1].copy()}, shm_at=65536)
    assert len(fds) == 1 and memfds() == before + 2  # the memfd released is written again, not a new one
    assert np.array_equal(pipedata.decode(body_of(again))["frame"], frame[::-1])
    pipedata.release(fds)
    del value
    deadline = time.monotonic() + 3
    while memfds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert memfds() == before  # idle for IDLE_S: closed
    with open("/proc/self/maps") as maps:
        assert "/memfd:bis-pipeline" not in maps.read()


def test_a_memfd_whose_process_is_gone_is_a_clear_error():
    parts, fds = pipedata.encode(np.zeros(100_000), shm_at=1024)
    head = bytearray(parts[0])
    head[16 + 9:16 + 13] = (2**22 + 12345).to_bytes(4, "big")  # a pid no process has (pid_max is 2**22)
    with pytest.raises(pipedata.MemfdGone, match="the value of the step before is gone"):
        pipedata.decode(body_of([bytes(head), *parts[1:]]))
    pipedata.release(fds)


def test_joined_parents_come_as_a_dict_of_their_values():
    one, _ = pipedata.encode({"a": np.ones(3)})
    two, _ = pipedata.encode([1, 2])
    value = pipedata.decode(body_of(pipedata.join([("left", body_of(one)), ("right", body_of(two))])))
    assert list(value) == ["left", "right"] and value["right"] == [1, 2] and value["left"]["a"].sum() == 3


@pytest.mark.parametrize("body", [b"", b"{}", b"BISP\x00\x00\x00\x00", b"BISP" + b"\x00\x00\x00\x01" + b"\xff" * 8])
def test_what_is_not_a_value_is_refused(body):
    with pytest.raises(pipedata.PipeDataError):
        pipedata.decode(body)


class _Endpoint:
    def __init__(self, disabled=False, support=False, remote=False):
        self.disabled, self.is_support, self.is_remote = disabled, support, remote


ENDPOINTS = {"a": _Endpoint(), "b": _Endpoint(), "c": _Endpoint(), "off": _Endpoint(disabled=True),
             "helper": _Endpoint(support=True), "far": _Endpoint(remote=True)}


def test_the_list_and_the_graph_forms():
    chain, graph = parse_pipelines({"p": {"PIPELINE": ["a", "far", "c"]},
                                    "g": {"PIPELINE": {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}},
                                    "d": {}}, {**ENDPOINTS, "d": _Endpoint()})
    assert chain.parents == {"a": (), "far": ("a",), "c": ("far",)}  # (a remote step is a step too)
    assert chain.order == ("a", "far", "c")
    assert chain.last == "c" and graph.last == "d"
    assert graph.order == ("a", "b", "c", "d") and graph.parents["d"] == ("b", "c")


@pytest.mark.parametrize(("entry", "words"), [
    ({"PIPELINE": ["a", "zz"]}, "step 'zz' is no endpoint"),
    ({"PIPELINE": ["a", "off"]}, "step 'off' is disabled"),
    ({"PIPELINE": ["a", "helper"]}, "support process"),
    ({"PIPELINE": ["a", "q"]}, "is a pipeline itself"),
    ({"PIPELINE": {"a": ["b"], "b": ["a"]}}, "a cycle"),
    ({"PIPELINE": {"a": [], "b": ["a"], "c": ["a"]}}, "expected one last step"),
    ({"PIPELINE": {"a": ["x"]}}, "'x' is not a step of this pipeline"),
    ({"PIPELINE": "a"}, "expected a list of endpoint names"),
    ({"PIPELINE": ["a"]}, "expected at least two steps"),
    ({"PIPELINE": ["a"], "MAX_BATCH_SIZE": 4}, "p.MAX_BATCH_SIZE: a pipeline entry takes only"),
])
def test_configuration_mistakes_name_the_key(entry, words):
    with pytest.raises(ConfigError, match=words):
        parse_pipelines({"p": entry, "q": {"PIPELINE": ["a", "b"]}}, ENDPOINTS)


def test_a_server_connection_keeps_a_value_until_released_or_its_gateway_is_gone(monkeypatch):
    """The memfds a model server holds for the values it answered: closed at RELEASE, and all of
    them when the gateway's connection closes (the gateway died): nothing is left held."""
    import socket

    from basic_inference_server.server.channel import Connection

    monkeypatch.setattr(pipedata._POOL, "KEPT", 0)  # (closed at once, not kept for the next value)
    ours, theirs = socket.socketpair()
    conn = Connection(ours, 1 << 20)
    held = {tag: pipedata.encode(np.zeros(100_000), shm_at=1024)[1] for tag in (1, 2)}
    for tag, fds in held.items():
        conn.hold(tag, fds)
    conn.release(1)
    with pytest.raises(OSError):
        os.fstat(held[1][0])
    os.fstat(held[2][0])  # still held: not released yet
    conn.close()
    theirs.close()
    with pytest.raises(OSError):
        os.fstat(held[2][0])
