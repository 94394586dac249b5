"""server/pool.py: worker threads, a bounded FIFO queue, deadlines, resizing."""

from __future__ import annotations

import threading

import pytest

from basic_inference_server.errors import (
    InputError,
    InvalidInput,
    ModelError,
    Overloaded,
    RequestTimeout,
    ServingError,
    Unavailable,
)
from basic_inference_server.server.worker import FlaskWorker


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

    def _predict(self, inputs):
        self.executed.append(inputs["id"])
        if "gate" in inputs:
            inputs["gate"].wait(5)
        if "fail_predict" in inputs:
            raise RuntimeError(inputs["fail_predict"])
        if "input_error" in inputs:
            raise InputError(inputs["input_error"], status=422)
        return {"echo": inputs["id"], "worker": self.worker_id}


class Submitter(threading.Thread):
    """Submits one request from its own thread, like a waitress request thread."""

    def __init__(self, pool, inputs, timeout=5.0):
        super().__init__(daemon=True)
        self.pool, self.inputs, self.timeout = pool, inputs, timeout
        self.job = None
        self.error = None
        self.start()

    def run(self):
        try:
            self.job = self.pool.submit(self.inputs, 0, self.timeout)
        except ServingError as exc:
            self.error = exc


@pytest.fixture
def executed():
    return []


@pytest.fixture
def pool_of(kit, executed):
    """A started pool of ``n`` FakeWorkers, all loaded."""

    def build(n=1, max_queue=64, on_event=None, fail_ids=(), loaded=None):
        pool = kit.pool(
            lambda idx: FakeWorker(executed, fail_load=idx in fail_ids, loaded=loaded, worker_id=idx),
            max_queue,
            on_event=on_event,
        )
        pool.start(n)
        assert pool.wait_loaded(2)
        return pool

    return build


def test_results_come_back(pool_of):
    pool = pool_of(2)
    job = pool.submit({"id": "a"}, call_id=7, timeout=2)
    assert job.result == {"echo": "a", "worker": job.worker_idx}
    assert job.call_id == 7
    assert job.worker_idx in (0, 1)
    assert pool.stats() == {"total": 2, "ready": 2, "loading": 0, "busy": 0, "failed": 0, "queue": 0,
                            "max_queue": 64}


def test_one_worker_serves_jobs_in_arrival_order(pool_of, kit, executed):
    pool = pool_of(1)
    gate = kit.gate()
    first = Submitter(pool, {"id": "first", "gate": gate})
    assert kit.wait_until(lambda: pool.stats()["busy"] == 1)
    waiting = []
    for i in range(5):
        waiting.append(Submitter(pool, {"id": i}))
        assert kit.wait_until(lambda n=i + 1: pool.stats()["queue"] == n)
    gate.set()
    for thread in [first, *waiting]:
        thread.join(2)
    assert executed == ["first", 0, 1, 2, 3, 4]
    assert [t.job.result["echo"] for t in waiting] == [0, 1, 2, 3, 4]


def test_exception_in_pre_process_is_invalid_input(pool_of, executed):
    pool = pool_of(1)
    with pytest.raises(InvalidInput) as info:
        pool.submit({"id": 1, "fail_pre": "TEXT should be defined in inputs"}, 1, 2)
    assert info.value.status == 400
    assert info.value.message == "TEXT should be defined in inputs"
    assert executed == []  # _predict never ran


def test_exception_in_predict_is_model_error_with_type(pool_of):
    pool = pool_of(1)
    with pytest.raises(ModelError) as info:
        pool.submit({"id": 1, "fail_predict": "CUDA out of memory"}, 1, 2)
    assert info.value.status == 500
    assert "RuntimeError" in info.value.message
    assert "CUDA out of memory" in info.value.message
    assert info.value.to_body()["error"]["type"] == "ModelError"


def test_input_error_from_predict_keeps_its_status(pool_of):
    pool = pool_of(1)
    with pytest.raises(InputError) as info:
        pool.submit({"id": 1, "input_error": "TEXT too long"}, 1, 2)
    assert info.value.status == 422
    assert info.value.message == "TEXT too long"


def test_worker_keeps_serving_after_many_failures(pool_of):
    pool = pool_of(1)
    for i in range(20):
        kind = "fail_pre" if i % 2 else "fail_predict"
        with pytest.raises((InvalidInput, ModelError)):
            pool.submit({"id": i, kind: "nope"}, i, 2)
    assert pool.stats()["busy"] == 0
    assert pool.stats()["ready"] == 1
    assert pool.submit({"id": "ok"}, 21, 2).result["echo"] == "ok"


def test_full_queue_answers_overloaded_with_retry_after(pool_of, kit):
    pool = pool_of(1, max_queue=1)
    gate = kit.gate()
    running = Submitter(pool, {"id": "running", "gate": gate})
    assert kit.wait_until(lambda: pool.stats()["busy"] == 1)
    queued = Submitter(pool, {"id": "queued"})
    assert kit.wait_until(lambda: pool.stats()["queue"] == 1)
    with pytest.raises(Overloaded) as info:
        pool.submit({"id": "rejected"}, 3, 2)
    assert info.value.status == 503
    assert info.value.headers() == {"Retry-After": "1"}
    gate.set()
    running.join(2)
    queued.join(2)
    assert queued.error is None
    assert queued.job.result["echo"] == "queued"


def test_slow_request_times_out_and_cancelled_job_is_skipped(pool_of, kit, executed):
    pool = pool_of(1)
    gate = kit.gate()
    slow = Submitter(pool, {"id": "slow", "gate": gate}, timeout=0.25)
    assert kit.wait_until(lambda: pool.stats()["busy"] == 1)
    with pytest.raises(RequestTimeout) as info:
        pool.submit({"id": "behind"}, 2, timeout=0.1)
    assert info.value.status == 504
    slow.join(2)
    assert isinstance(slow.error, RequestTimeout)
    assert "REQUEST_TIMEOUT=0.25s" in slow.error.message
    gate.set()
    assert pool.submit({"id": "after"}, 3, 2).result["echo"] == "after"
    assert executed == ["slow", "after"]  # "behind" was cancelled while queued: never run
    assert pool.stats()["busy"] == 0


def test_very_long_request_timeout_still_answers(pool_of):
    pool = pool_of(1)
    assert pool.submit({"id": "a"}, 1, timeout=1e10).result["echo"] == "a"


def test_resize_grows_in_background_and_shrinks(pool_of, kit):
    events = []
    pool = pool_of(1, on_event=events.append)
    assert pool.resize(3) == {"previous": 1, "target": 3}
    assert pool.wait_loaded(2)
    assert pool.stats()["ready"] == 3
    assert pool.stats()["total"] == 3
    assert pool.resize(1) == {"previous": 3, "target": 1}
    assert kit.wait_until(lambda: pool.stats()["ready"] == 1)
    assert pool.stats()["total"] == 1
    assert pool.submit({"id": "still"}, 1, 2).result["echo"] == "still"
    assert events == ["Resizing workers: 0 -> 1", "Resizing workers: 1 -> 3", "Resizing workers: 3 -> 1"]


def test_failed_load_is_recorded_and_not_ready(pool_of):
    events = []
    pool = pool_of(2, fail_ids={1}, on_event=events.append)
    stats = pool.stats()
    assert (stats["ready"], stats["failed"], stats["total"], stats["loading"]) == (1, 1, 1, 0)
    assert pool.load_errors == ["worker 1: OSError: weights.bin not found"]
    assert "Worker 1 failed to load: OSError: weights.bin not found" in events
    assert pool.submit({"id": "a"}, 1, 2).result["worker"] == 0


def test_submit_without_ready_worker_is_unavailable(kit, pool_of):
    never_started = kit.pool(lambda idx: FakeWorker([]), 4)
    with pytest.raises(Unavailable) as info:
        never_started.submit({"id": 1}, 1, 1)
    assert info.value.status == 503
    assert info.value.headers() == {"Retry-After": "1"}
    all_failed = pool_of(1, fail_ids={0})
    with pytest.raises(Unavailable):
        all_failed.submit({"id": 1}, 1, 1)


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


def test_stop_finishes_queued_jobs_and_ends_threads(pool_of, kit):
    loaded = []
    pool = pool_of(2, loaded=loaded)
    gate = kit.gate()
    busy = [Submitter(pool, {"id": f"busy{i}", "gate": gate}) for i in range(2)]
    assert kit.wait_until(lambda: pool.stats()["busy"] == 2)
    queued = Submitter(pool, {"id": "queued"})
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
    assert queued.job.result["echo"] == "queued"
    assert [t.job.result["echo"] for t in busy] == ["busy0", "busy1"]
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
    import time

    from basic_inference_server.server.job import Job
    from basic_inference_server.server.pool import JobQueue

    queue = JobQueue(100)
    jobs = [Job({"i": i}, i) for i in range(5)]
    for job in jobs:
        queue.put(job)
    assert queue.get_batch(3, 0.5) == jobs[:3]
    started = time.monotonic()
    assert queue.get_batch(8, 0.1) == jobs[3:]  # only two left: returns after the window
    assert 0.05 <= time.monotonic() - started < 0.5
    assert queue.depth == 0
    queue.put_control("stop")
    queue.put(Job({}, 9))
    assert queue.get_batch(8, 0.1) == ["stop"]  # a control item is never batched


def test_batched_pool_groups_waiting_jobs(kit):
    import threading

    sizes = []

    class Batched(FlaskWorker):
        def _predict(self, batch):
            sizes.append(len(batch))
            return [item["i"] * 10 for item in batch]

    pool = kit.pool(lambda idx: Batched(), 16)
    pool.max_batch_size, pool.max_batch_wait = 4, 0.2
    pool.start(1)
    assert pool.wait_loaded(2)
    results = {}

    def submit(i):
        results[i] = pool.submit({"i": i}, i, 5).result

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == {i: i * 10 for i in range(8)}
    assert max(sizes) > 1 and sum(sizes) == 8 and all(size <= 4 for size in sizes)
