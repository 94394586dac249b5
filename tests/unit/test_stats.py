"""Histograms, the dashboard's rolling series, and request ids."""

from __future__ import annotations

import logging

import pytest

from basic_inference_server import requestid
from basic_inference_server.errors import UnknownSignature
from basic_inference_server.gateway.observe.activity import Activity
from basic_inference_server.server.stats import Histogram, ServerStats, cumulative_buckets


def test_histogram_buckets_sum_and_prometheus_cumulative_form():
    hist = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 0.5, 3.0):
        hist.observe(value)
    assert hist.counts == [2, 1, 1, 1]  # le 0.01 includes 0.01 itself
    assert hist.count == 5 and hist.sum == pytest.approx(3.565)
    assert hist.cumulative() == [("0.01", 2), ("0.1", 3), ("1", 4), ("+Inf", 5)]


def test_histogram_quantiles_interpolate_inside_the_bucket():
    hist = Histogram((0.01, 0.02))
    assert hist.quantile(0.5) is None
    for _ in range(10):
        hist.observe(0.015)
    assert hist.quantile(0.5) == pytest.approx(0.015)
    assert hist.quantile(1.0) == pytest.approx(0.02)
    hist.observe(99)
    assert hist.quantile(1.0) == 0.02  # the overflow bucket reports the last bound


def test_server_stats_count_each_request_of_a_batch():
    stats = ServerStats()
    stats.record_batch([0.001, 0.002, 0.003], 0.04, batching=True)
    stats.record_batch([0.001], 0.01, batching=False)
    data = stats.to_json()
    assert sum(data["model_seconds"]["counts"]) == 4
    assert data["model_seconds"]["sum"] == pytest.approx(3 * 0.04 + 0.01)
    assert sum(data["queue_seconds"]["counts"]) == 4
    assert sum(data["batch_size"]["counts"]) == 1 and data["batch_size"]["sum"] == 3
    assert cumulative_buckets(data["batch_size"])[-1] == ("+Inf", 1)


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_activity_rolls_intervals_and_fills_idle_ones_with_zero():
    clock = FakeClock(1000.0)
    activity = Activity(interval=5, keep=4, clock=clock)
    for _ in range(10):
        activity.count("a", 200, 0.010)
    activity.count("a", 503, 0.001)
    activity.count("b", 404, 0.001)
    assert activity.series()["t"] == []  # the current interval is not finished
    clock.now = 1016.0  # 1000-1005 done, 1005-1010 and 1010-1015 idle
    series = activity.series()
    assert series["t"] == [1000.0, 1005.0, 1010.0]
    a = series["signatures"]["a"]
    assert a["rps"] == [2.2, 0.0, 0.0]
    assert a["server_errors_per_s"] == [0.2, 0.0, 0.0] and a["client_errors_per_s"] == [0.0, 0.0, 0.0]
    assert a["p50_ms"][0] == pytest.approx(7.75, abs=2.5) and a["p50_ms"][1:] == [None, None]
    assert series["signatures"]["b"]["client_errors_per_s"] == [0.2, 0.0, 0.0]
    assert series["signatures"]["b"]["server_errors_per_s"] == [0.0, 0.0, 0.0]
    clock.now = 5000.0  # a long idle time keeps only the last `keep` intervals
    assert len(activity.series()["t"]) == 4


def test_request_id_accepts_safe_ids_only():
    assert requestid.accept("abc-1.2:3_x") == "abc-1.2:3_x"
    for bad in (None, "", "a b", "x" * 129, "id\r\nX-Evil: 1"):
        made = requestid.accept(bad)
        assert made != bad and len(made) == 24


def test_error_bodies_and_log_records_carry_the_bound_request_id():
    assert "request_id" not in UnknownSignature("x").to_body()["error"]
    token = requestid.bind("rid-7")
    try:
        assert UnknownSignature("x").to_body()["error"]["request_id"] == "rid-7"
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
        requestid.RequestIdFilter().filter(record)
        assert record.request_id == "rid-7"
    finally:
        requestid.unbind(token)
    assert requestid.current() == "-"
