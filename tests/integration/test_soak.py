"""A short fault soak: load on two endpoints while their servers are killed at random."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_soak_loses_nothing_while_servers_are_killed():
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--duration", "12", "--clients", "6", "--seed", "7"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["kills"] >= 2
    assert summary["lost"] == 0 and summary["wrong_answer"] == 0 and summary["executed_twice"] == 0
    assert summary["executions_seen"] >= summary["answered"]["200"] * 0.9  # the duplicate check saw the work
    assert summary["errors_outside_restart_windows"] == 0
    assert summary["answered"]["200"] > 500
    assert set(summary["answered"]) <= {"200", "502", "503"}


def test_clients_leaving_mid_stream_under_load_leave_no_busy_worker_and_no_open_connection():
    proc = subprocess.run([sys.executable, "-m", "bench.disconnects", "--duration", "12", "--clients", "4",
                           "--leavers", "40", "--seed", "3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["outcomes"].get("stream_ok", 0) >= 20 and summary["outcomes"].get("collected_ok", 0) >= 2
    assert sum(summary["leavers"].values()) == 40 and summary["leavers"].get("error", 0) == 0
    assert summary["busy_workers_after"] == 0
    assert summary["client_connections_after"] <= summary["client_connections_before"]
    assert summary["cancelled"]["running"] + summary["cancelled"]["queued"] >= summary["leavers"]["mid_stream"]


def test_soak_with_reloads_and_recycles_loses_nothing_and_fails_only_where_a_sigkill_hits():
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--duration", "12", "--clients", "6", "--seed", "5",
                           "--mixed"], cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["lost"] == 0 and summary["wrong_answer"] == 0 and summary["executed_twice"] == 0
    assert summary["errors_outside_restart_windows"] == 0
    assert set(summary["reloads"]) == {"200"} and sum(summary["reloads"].values()) >= 3
    # At least one of each in 12 s: how many more depends on the throughput the machine gives the
    # soak (under `make test` it shares two cores with three other test processes).
    assert summary["recycles"] >= 1 and summary["kills"] >= 1
