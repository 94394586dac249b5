"""server/pool.py: worker threads, a bounded FIFO queue, deadlines, resizing."""

from __future__ import annotations

import re
import threading
import time

import pytest

from basic_inference_server.errors import (
    InputError,
)
from basic_inference_server.server.worker import FlaskWorker
from basic_inference_server.transport.frames import JOB


class FakeWorker(FlaskWorker):
    """Behaviour chosen per request by the inputs; records the ids it served, in order."""

    def __init__(self, executed: list, fail_load: bool = False, loaded: list | None = None, **kwargs):
        super().__init__(prefix_log="[FAKE]", **kwargs)
        self.executed = executed
        self.fail_load = fail_load
        self.loaded = loaded if loaded is not None else []

    def _load_model(self):
        if self.fail_load:
            raise OSError("weights.bin not found")
        self.loaded.append(threading.current_thread())

    def _pre_process(self, inputs):
        if "fail_pre" in inputs:
            raise ValueError(inputs["fail_pre"])
        return inputs

    gate = threading.Event()  # what a request with "gate_" waits for (each test sets its own)

    def _predict(self, inputs):
        self.executed.append(inputs["id"])
        if inputs.get("gate_"):
            FakeWorker.gate.wait(5)
        if "fail_predict" in inputs:
            raise RuntimeError(inputs["fail_predict"])
        if "input_error" in inputs:
            raise InputError(inputs["input_error"], status=422)
        return {"echo": inputs["id"], "worker": self.worker_id}


class Submitter(threading.Thread):
    """Sends one request from its own thread, as the gateway does, and keeps its answer (None:
    no answer within ``timeout``, and the request was cancelled)."""

    def __init__(self, peer, inputs, timeout=5.0):
        super().__init__(daemon=True)
        self.peer, self.inputs, self.timeout = peer, inputs, timeout
        self.answer = None
        self.start()

    def run(self):
        self.answer = self.peer.run(self.inputs, self.timeout)


@pytest.fixture
def executed():
    return []


@pytest.fixture
def pool_of(kit, executed, tmp_path):
    """A started pool of ``n`` FakeWorkers, all loaded, behind a model server's /run; the pool
    and the gateway's end of its channel."""

    def build(n=1, max_queue=64, on_event=None, fail_ids=(), loaded=None):
        pool = kit.pool(
            lambda idx: FakeWorker(executed, fail_load=idx in fail_ids, loaded=loaded, worker_id=idx),
            max_queue,
            on_event=on_event,
        )
        pool.start(n)
        assert pool.wait_loaded(2)
        folder = tmp_path / f"p{len(kit.pools)}"
        folder.mkdir()
        return pool, kit.serve(pool, folder)

    return build


def test_results_come_back(pool_of):
    pool, peer = pool_of(2)
    answer = peer.run({"id": "a"})
    assert answer.status == 200
    worker = answer.body["predict_result"]["worker"]
    assert answer.body["predict_result"] == {"echo": "a", "worker": worker} and worker in (0, 1)
    assert answer.body["worker_id"] == f"h0:{worker}" and answer.body["signature"] == f"h0.unit.UnitWorker.{worker}"
    assert answer.body["call_id"] >= 1
    assert pool.stats() == {"total": 2, "ready": 2, "loading": 0, "busy": 0, "failed": 0, "queue": 0,
                            "max_queue": 64}


def test_one_worker_serves_calls_in_arrival_order(pool_of, kit, executed):
    pool, peer = pool_of(1)
    gate = FakeWorker.gate = kit.gate()
    first = Submitter(peer, {"id": "first", "gate_": True})
    assert kit.wait_until(lambda: pool.stats()["busy"] == 1)
    waiting = []
    for i in range(5):
        waiting.append(Submitter(peer, {"id": i}))
        assert kit.wait_until(lambda n=i + 1: pool.stats()["queue"] == n)
    gate.set()
    for thread in [first, *waiting]:
        thread.join(2)
    assert executed == ["first", 0, 1, 2, 3, 4]
    assert [t.answer.body["predict_result"]["echo"] for t in waiting] == [0, 1, 2, 3, 4]


def test_exception_in_pre_process_is_invalid_input(pool_of, executed):
    _, peer = pool_of(1)
    answer = peer.run({"id": 1, "fail_pre": "TEXT should be defined in inputs"})
    assert (answer.status, answer.error_type) == (400, "InvalidInput")
    assert answer.body["ERROR"] == "TEXT should be defined in inputs"
    assert executed == []  # _predict never ran


def test_exception_in_predict_is_model_error_with_type(pool_of):
    _, peer = pool_of(1)
    answer = peer.run({"id": 1, "fail_predict": "CUDA out of memory"})
    assert (answer.status, answer.error_type) == (500, "ModelError")
    assert answer.body["ERROR"] == "RuntimeError in _predict: CUDA out of memory"
    assert "batching" not in answer.body["ERROR"]


def test_input_error_from_predict_keeps_its_status(pool_of):
    _, peer = pool_of(1)
    answer = peer.run({"id": 1, "input_error": "TEXT too long"})
    assert (answer.status, answer.body["ERROR"]) == (422, "TEXT too long")


def test_worker_keeps_serving_after_many_failures(pool_of):
    pool, peer = pool_of(1)
    for i in range(20):
        kind = "fail_pre" if i % 2 else "fail_predict"
        assert peer.run({"id": i, kind: "nope"}).status in (400, 500)
    assert pool.stats()["busy"] == 0
    assert pool.stats()["ready"] == 1
    assert peer.run({"id": "ok"}).body["predict_result"]["echo"] == "ok"


def test_full_queue_answers_overloaded_with_retry_after(pool_of, kit):
    pool, peer = pool_of(1, max_queue=1)
    gate = FakeWorker.gate = kit.gate()
    running = Submitter(peer, {"id": "running", "gate_": True})
    assert kit.wait_until(lambda: pool.stats()["busy"] == 1)
    queued = Submitter(peer, {"id": "queued"})
    assert kit.wait_until(lambda: pool.stats()["queue"] == 1)
    refused = peer.run({"id": "rejected"})
    assert (refused.status, refused.error_type, refused.retry_after) == (503, "Overloaded", "1")
    gate.set()
    running.join(2)
    queued.join(2)
    assert queued.answer.body["predict_result"]["echo"] == "queued"


def test_a_request_past_its_deadline_is_cancelled_and_skipped_while_queued(pool_of, kit, executed):
    pool, peer = pool_of(1)
    gate = FakeWorker.gate = kit.gate()
    slow = Submitter(peer, {"id": "slow", "gate_": True}, timeout=0.25)
    assert kit.wait_until(lambda: pool.stats()["busy"] == 1)
    assert peer.run({"id": "behind"}, timeout=0.1) is None  # the gateway's deadline: a CANCEL frame
    assert kit.wait_until(lambda: pool.stats()["queue"] == 0)  # out of the queue at once
    slow.join(2)
    assert slow.answer is None
    gate.set()
    assert peer.run({"id": "after"}).body["predict_result"]["echo"] == "after"
    assert executed == ["slow", "after"]  # "behind" was cancelled while queued: never run
    assert kit.wait_until(lambda: pool.stats()["busy"] == 0)
    assert pool.measured.to_json()["cancelled"]["queued"] == 1  # ("slow": running, if its CANCEL came first)


def test_resize_grows_in_background_and_shrinks(pool_of, kit):
    events = []
    pool, peer = pool_of(1, on_event=events.append)
    assert pool.resize(3) == {"previous": 1, "target": 3}
    assert pool.wait_loaded(2)
    assert pool.stats()["ready"] == 3
    assert pool.stats()["total"] == 3
    assert pool.resize(1) == {"previous": 3, "target": 1}
    assert kit.wait_until(lambda: pool.stats()["ready"] == 1)
    assert pool.stats()["total"] == 1
    assert peer.run({"id": "still"}).body["predict_result"]["echo"] == "still"
    assert events == ["Resizing workers: 0 -> 1", "Resizing workers: 1 -> 3", "Resizing workers: 3 -> 1"]


def test_failed_load_is_recorded_and_not_ready(pool_of):
    events = []
    pool, peer = pool_of(2, fail_ids={1}, on_event=events.append)
    stats = pool.stats()
    assert (stats["ready"], stats["failed"], stats["total"], stats["loading"]) == (1, 1, 1, 0)
    assert pool.load_errors == ["worker 1: OSError: weights.bin not found"]
    assert "Worker 1 failed to load: OSError: weights.bin not found" in events
    assert peer.run({"id": "a"}).body["predict_result"]["worker"] == 0


def test_a_request_without_a_ready_worker_is_unavailable(kit, pool_of, tmp_path):
    never_started = kit.pool(lambda idx: FakeWorker([]), 4)
    answer = kit.serve(never_started, tmp_path).run({"id": 1})
    assert (answer.status, answer.error_type, answer.retry_after) == (503, "ServerUnavailable", "1")
    _, all_failed = pool_of(1, fail_ids={0})
    assert all_failed.run({"id": 1}).status == 503


def test_wait_loaded_times_out_while_a_model_loads(kit):
    gate = kit.gate()

    class SlowLoader(FakeWorker):
        def _load_model(self):
            gate.wait(5)

    pool = kit.pool(lambda idx: SlowLoader([]), 4)
    pool.start(1)
    assert pool.wait_loaded(0.05) is False
    assert pool.stats()["loading"] == 1
    gate.set()
    assert pool.wait_loaded(2) is True


def test_stop_finishes_queued_calls_and_ends_threads(pool_of, kit):
    loaded = []
    pool, peer = pool_of(2, loaded=loaded)
    gate = FakeWorker.gate = kit.gate()
    busy = [Submitter(peer, {"id": f"busy{i}", "gate_": True}) for i in range(2)]
    assert kit.wait_until(lambda: pool.stats()["busy"] == 2)
    queued = Submitter(peer, {"id": "queued"})
    assert kit.wait_until(lambda: pool.stats()["queue"] == 1)
    stopped = []
    stopper = threading.Thread(target=lambda: stopped.append(pool.stop(2)))
    stopper.start()
    gate.set()
    stopper.join(3)
    assert stopped == [True]
    assert len(loaded) == 2
    assert not any(thread.is_alive() for thread in loaded)
    for thread in [*busy, queued]:
        thread.join(1)
    assert queued.answer.body["predict_result"]["echo"] == "queued"
    assert [t.answer.body["predict_result"]["echo"] for t in busy] == ["busy0", "busy1"]
    assert pool.stats()["ready"] == 0


def test_sys_exit_in_load_model_is_a_load_failure_not_a_hang(kit):
    class Exiting(FakeWorker):
        def _load_model(self):
            raise SystemExit("weights missing")

    pool = kit.pool(lambda idx: Exiting([]), 4)
    pool.start(1)
    assert pool.wait_loaded(2) is True
    assert pool.load_errors == ["worker 0: SystemExit: weights missing"]


def test_get_batch_takes_up_to_the_size_in_order_and_waits_at_most_the_window():
    from basic_inference_server.server.call import Call
    from basic_inference_server.server.callqueue import CallQueue

    queue = CallQueue(100)
    jobs = [Call(i, "-", print, inputs={"i": i}) for i in range(5)]
    for job in jobs:
        queue.put(job)
    assert queue.get_batch(3, 0.5) == jobs[:3]
    started = time.monotonic()
    assert queue.get_batch(8, 0.1) == jobs[3:]  # only two left: returns after the window
    assert 0.05 <= time.monotonic() - started < 0.5
    assert queue.depth == 0
    queue.put_control("stop")
    queue.put(Call(9, "-", print, inputs={}))
    assert queue.get_batch(8, 0.1) == ["stop"]  # a control item is never batched


def test_batched_pool_groups_waiting_calls(kit, tmp_path):
    sizes = []

    class Batched(FlaskWorker):
        def _predict(self, batch):
            sizes.append(len(batch))
            return [item["i"] * 10 for item in batch]

    pool = kit.pool(lambda idx: Batched(), 16, max_batch_size=4, max_batch_wait=0.2)
    pool.start(1)
    assert pool.wait_loaded(2)
    peer = kit.serve(pool, tmp_path)
    tags = {i: peer.send({"i": i}) for i in range(8)}
    results = {i: peer.wait(tag).body["predict_result"] for i, tag in tags.items()}
    assert results == {i: i * 10 for i in range(8)}
    assert max(sizes) > 1 and sum(sizes) == 8 and all(size <= 4 for size in sizes)


def test_an_exception_in_a_batchs_predict_names_batching_for_every_call(kit, tmp_path):
    class Unbatched(FlaskWorker):  # written for one input: a list has no .upper()
        def _predict(self, text):
            return text.upper()

    pool = kit.pool(lambda idx: Unbatched(), 16, max_batch_size=4, max_batch_wait=0.2)
    pool.start(1)
    assert pool.wait_loaded(2)
    peer = kit.serve(pool, tmp_path)
    answers = [peer.wait(tag) for tag in [peer.send({"TEXT": str(i)}) for i in range(3)]]
    for answer in answers:
        assert (answer.status, answer.error_type) == (500, "ModelError")
        assert answer.body["ERROR"].startswith("AttributeError in _predict: 'list' object has no attribute 'upper' "
                                               "(batching is on, MAX_BATCH_SIZE=4: _predict receives a list")


def test_a_batch_with_a_wrong_number_of_predictions_says_what_batching_asks(kit, tmp_path):
    class NoAnswer(FlaskWorker):
        def _predict(self, batch):
            return []

    pool = kit.pool(lambda idx: NoAnswer(), 16, max_batch_size=4, max_batch_wait=0.2)
    pool.start(1)
    assert pool.wait_loaded(2)
    peer = kit.serve(pool, tmp_path)
    answers = [peer.wait(tag) for tag in [peer.send({"i": i}) for i in range(2)]]
    for answer in answers:
        assert re.match(r"_predict must return (\d) predictions for a batch of \1, got 0 \(batching is on, "
                        r"MAX_BATCH_SIZE=4: .* must return one prediction per input", answer.body["ERROR"]), answer.body


def test_at_low_load_the_idle_worker_that_reads_a_request_runs_it(pool_of):
    # Leader/followers: one idle worker waits at the channel's sockets and runs what it reads, so
    # one request at a time stays on one worker (a hand-off through the queue would spread them
    # over the four, the longest-waiting first).
    pool, peer = pool_of(4)
    workers = []
    for n in range(30):
        workers.append(peer.run({"id": n}).body["predict_result"]["worker"])
        time.sleep(0.02)  # the client's think time: the worker is back at the sockets before the next
    assert max(workers.count(w) for w in set(workers)) >= 20, workers


def test_a_call_queued_from_elsewhere_wakes_the_worker_waiting_at_the_sockets(pool_of, kit):
    from basic_inference_server.server.call import Call

    pool, peer = pool_of(1)
    assert peer.run({"id": "first"}).status == 200  # the only worker now waits at the sockets
    assert kit.wait_until(lambda: pool.stats()["busy"] == 0)
    done = threading.Event()
    call = Call(99, "-", lambda call: done.set(), inputs={"id": "from-the-http-port"})
    pool.enqueue(call)  # as the HTTP port queues a call: nothing arrives on the channel
    assert done.wait(5), "the worker waiting at the sockets was not woken for a queued call"
    assert call.result == {"echo": "from-the-http-port", "worker": 0}
    assert peer.run({"id": "after"}).status == 200  # and it leads again


def test_a_burst_read_by_one_worker_is_shared_with_the_idle_ones(pool_of, kit, executed):
    pool, peer = pool_of(3)
    FakeWorker.gate = kit.gate()
    assert peer.run({"id": "warm"}).status == 200
    tags = [peer.send({"id": n, "gate_": True}) for n in range(3)]  # likely read in one chunk
    assert kit.wait_until(lambda: pool.stats()["busy"] == 3), pool.stats()  # all three run at once
    FakeWorker.gate.set()
    assert all(peer.wait(tag).status == 200 for tag in tags)


class _Bell:
    """A lobby whose leader's seat is an event: ``ring`` sets it, the leader's ``wait`` waits for it."""

    def __init__(self):
        self.leader, self.rings, self._rung = self, 0, threading.Event()

    def ring(self):
        self.rings += 1
        self._rung.set()

    def wait(self):
        self._rung.wait(5)
        self._rung.clear()


def test_a_call_queued_while_the_idle_worker_is_being_woken_rings_the_leader(kit):
    from basic_inference_server.server.call import Call
    from basic_inference_server.server.callqueue import CallQueue

    queue, bell = CallQueue(10), _Bell()
    queue.lobby = bell
    taken: list = []
    leader = threading.Thread(target=lambda: taken.append(queue.take()), daemon=True)
    leader.start()
    assert kit.wait_until(lambda: queue._leading)  # the first idle worker leads
    follower = threading.Thread(target=lambda: taken.append(queue.take()), daemon=True)
    follower.start()
    assert kit.wait_until(lambda: queue._idle == 1)  # the second waits on the queue
    first, second = Call(1, "-", print, inputs={}), Call(2, "-", print, inputs={})
    queue.put(first)  # wakes the follower: no ring
    assert bell.rings == 0
    queue.put(second)  # the follower is taken already, whether it runs yet or not: the leader's bell
    assert bell.rings == 1
    leader.join(5)
    follower.join(5)
    assert sorted(call.call_id for call in taken) == [1, 2]


def test_a_durable_jobs_own_fields_never_reach_the_hooks(kit, tmp_path):
    """A REQUEST with the JOB flag (a durable job's body, stored as it came when it was too large
    to parse in the gateway): PRIORITY, WEBHOOK and custom_id are left out of the inputs; the same
    keys in a /run body are the model's inputs, as they always were."""
    class Inputs(FlaskWorker):
        def _predict(self, inputs):
            return sorted(inputs)

    pool = kit.pool(lambda idx: Inputs(), 16)
    pool.start(1)
    assert pool.wait_loaded(2)
    peer = kit.serve(pool, tmp_path)
    body = {"SIGNATURE": "unit", "VALUE": 1, "PRIORITY": 3, "WEBHOOK": "http://h/", "custom_id": "c"}
    assert peer.wait(peer.send(body, flags=JOB)).body["predict_result"] == ["VALUE"]
    assert peer.wait(peer.send(body)).body["predict_result"] == ["PRIORITY", "VALUE", "WEBHOOK", "custom_id"]
