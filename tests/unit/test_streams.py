"""server/streams.py and the pool: generators streamed with credit, collected, cancelled, batched."""

from __future__ import annotations

import json
import threading
import time

import pytest

from basic_inference_server import END_OF_STREAM, requestid
from basic_inference_server.errors import ModelError
from basic_inference_server.server.call import Call, CallState, Streamed
from basic_inference_server.server.pool import WorkerPool
from basic_inference_server.server.streamout import StreamOut
from basic_inference_server.server.worker import FlaskWorker
from basic_inference_server.transport.frames import (
    CREDIT,
    ITEM,
    STREAM,
    FrameReader,
    credit_frame,
    item_frame,
    reply_frame,
    request_head,
)


class Wire:
    """A StreamOut's far side: what was sent, in order, and when the last frame went."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.pushes = 0
        self.lock = threading.Lock()

    def send(self, item: bytes) -> None:
        self.sent.append(item)

    def push(self) -> None:
        with self.lock:
            self.pushes += 1


class Streamer(FlaskWorker):
    """Yields COUNT items (the generator notes its fate in ``fates``), or, batched, one step per
    item of ``STEPS``."""

    fates: list[str] = []

    def _predict(self, inputs):
        if isinstance(inputs, list):
            return self._steps(inputs)
        return self._items(inputs)

    def _items(self, inputs):
        try:
            for index in range(inputs["COUNT"]):
                if index == inputs.get("FAIL_AT"):
                    raise RuntimeError(f"broke at {index}")
                yield {"i": index}
                if inputs.get("GAP"):
                    time.sleep(inputs["GAP"])
        except GeneratorExit:
            self.fates.append("closed")
            raise
        self.fates.append("finished")

    def _steps(self, batch):
        for step in batch[0]["STEPS"]:
            yield [END_OF_STREAM if value == "end" else value for value in step]
            self.fates.append(sorted(self.cancelled_slots))
            time.sleep(batch[0].get("GAP", 0))

    def _post_process(self, item):
        return item


def test_frames_for_streams_round_trip():
    reader = FrameReader()
    data = request_head(9, "rid", "sig", 2, STREAM) + b"{}" + item_frame(9, b'{"i":0}') + credit_frame(9, 3) \
        + reply_frame(9, 200, b'{"items":1}', None, STREAM)
    request, item, credit, end = reader.feed(data)
    assert request.flags & STREAM and request.request_meta() == ("rid", "sig")
    assert (item.kind, item.tag, item.body) == (ITEM, 9, b'{"i":0}')
    assert (credit.kind, credit.status) == (CREDIT, 3)
    assert end.flags & STREAM and end.body == b'{"items":1}'


def test_stream_out_sends_within_its_credit_and_waits_for_more():
    wire = Wire()
    out = StreamOut(wire.send, wire.push, window=2)
    assert out.put(b"a") and out.put(b"b")
    blocked = threading.Thread(target=out.put, args=(b"c",), daemon=True)
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive() and wire.sent == [b"a", b"b"]  # no credit: the producer waits
    out.grant(1)
    blocked.join(2)
    assert not blocked.is_alive() and wire.sent == [b"a", b"b", b"c"]


def test_the_end_waits_for_the_kept_items_and_a_cancel_drops_everything():
    wire = Wire()
    out = StreamOut(wire.send, wire.push, window=1, backlog=5)
    for item in (b"1", b"2", b"3"):
        assert out.put(item)  # the backlog keeps what has no credit yet: no wait
    out.end(lambda: wire.send(b"END"))
    assert wire.sent == [b"1"]
    out.grant(1)
    assert wire.sent == [b"1", b"2"]
    out.grant(5)
    assert wire.sent == [b"1", b"2", b"3", b"END"]

    cancelled = StreamOut(wire.send, wire.push, window=0)
    waiter = threading.Thread(target=lambda: cancelled.put(b"x"), daemon=True)
    waiter.start()
    time.sleep(0.05)
    cancelled.cancel()
    waiter.join(2)
    assert not waiter.is_alive()
    assert not cancelled.put(b"y")
    cancelled.end(lambda: wire.send(b"NEVER"))
    assert b"NEVER" not in wire.sent


@pytest.fixture
def pool(kit):
    Streamer.fates = []

    def build(max_batch_size=1):
        pool = kit.pool(lambda idx: Streamer(worker_id=idx), 16, max_batch_size=max_batch_size, max_batch_wait=0.05)
        pool.start(1)
        assert pool.wait_loaded(2)
        return pool

    return build


def run_job(pool: WorkerPool, inputs: dict, window: int = 100, stream: bool = True
            ) -> tuple[Call, Wire, threading.Event]:
    """Queue a call as the model server's /run does (its stream given, its inputs read already)."""
    wire, done = Wire(), threading.Event()
    call = Call(1, requestid.NONE, lambda call: done.set(), inputs=inputs)
    if stream:
        call.stream = StreamOut(wire.send, wire.push, window=window)
    pool.enqueue(call)
    return call, wire, done


def test_a_generator_is_streamed_item_by_item_and_collected_without_a_stream(pool):
    p = pool()
    job, wire, done = run_job(p, {"COUNT": 3})
    assert done.wait(2)
    assert [json.loads(item) for item in wire.sent] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert job.result is Streamed and job.error is None and job.stream.count == 3
    collected, _, done = run_job(p, {"COUNT": 2}, stream=False)
    assert done.wait(2)
    assert collected.result == [{"i": 0}, {"i": 1}]
    assert Streamer.fates == ["finished", "finished"]


def test_a_failure_after_an_item_is_the_jobs_error(pool):
    job, wire, done = run_job(pool(), {"COUNT": 3, "FAIL_AT": 1})
    assert done.wait(2)
    assert len(wire.sent) == 1
    assert isinstance(job.error, ModelError) and "broke at 1" in str(job.error)


def test_cancel_closes_a_running_generator_at_its_next_item_and_frees_the_worker(pool):
    p = pool()
    job, wire, done = run_job(p, {"COUNT": 1000, "GAP": 0.01}, window=1000)
    deadline = time.monotonic() + 2
    while not wire.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    p.cancel(job)
    assert done.wait(1)
    assert Streamer.fates == ["closed"] and job.state is CallState.DROPPED
    after, _, done = run_job(p, {"COUNT": 1}, stream=False)
    assert done.wait(2) and after.result == [{"i": 0}]  # the worker is free
    assert p.measured.to_json()["cancelled"] == {"queued": 0, "running": 1}


def test_a_generator_waiting_for_credit_is_closed_by_a_cancel(pool):
    p = pool()
    job, wire, done = run_job(p, {"COUNT": 10}, window=2)
    time.sleep(0.2)
    assert len(wire.sent) == 2 and not done.is_set()  # waiting at its third yield for credit
    p.cancel(job)
    assert done.wait(1)
    assert Streamer.fates == ["closed"]


def test_a_batch_generator_streams_each_request_its_own_items_and_ends_them_one_by_one(pool):
    p = pool(max_batch_size=3)
    steps = [["a0", None, "c0"], ["a1", "end", None], ["end", None, "c1"]]
    jobs = [run_job(p, {"STEPS": steps, "N": n}) for n in range(3)]
    for _job, _wire, done in jobs:
        assert done.wait(2)
    assert [[json.loads(item) for item in wire.sent] for _job, wire, _done in jobs] == [["a0", "a1"], [], ["c0", "c1"]]
    assert all(job.error is None and job.result is Streamed for job, _w, _d in jobs)


def test_a_cancelled_slot_of_a_batch_is_reported_to_the_generator(pool):
    p = pool(max_batch_size=2)
    steps = [["a", "b"]] * 50
    first, second = run_job(p, {"STEPS": steps, "GAP": 0.01}), run_job(p, {"STEPS": steps})
    time.sleep(0.1)
    p.cancel(second[0])
    assert first[2].wait(3) and second[2].wait(3)
    assert [1] in Streamer.fates
    assert len(first[1].sent) == 50 and len(second[1].sent) < 50
