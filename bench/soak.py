"""Fault soak: steady concurrent load on two endpoints while model servers are SIGKILLed at random.

    .venv/bin/python -m bench.soak [--duration 60] [--clients 8] [--seed 1] [--mixed]

With ``--mixed``, the servers are also reloaded (``/reload_server``, a random endpoint every
1-3 s), recycled (``MAX_REQUESTS`` 200 with a jitter of 50) and reconfigured (every 3-5 s the
configuration file changes ``soak_a``'s ``NR_WORKERS`` and adds or removes a third endpoint, then
the gateway gets SIGHUP) during the load: none of these may cost a request, so errors are still
allowed only inside a SIGKILL's window. ``--no-kills`` leaves out the SIGKILLs: then every answer
must be a 200.

A gateway runs two endpoints (the demo ``dummy_model_demo2`` with WEIGHT 1 and 2, two workers
each) on free loopback ports. Client threads send ``INPUT_VALUE = <unique id>`` as fast as they
are answered and check that each answer is the right one for its request. A killer thread waits
until both servers are READY, sleeps a random 0.5-3 s, SIGKILLs one of them, and records the
window from the kill until the server is READY again.

Counts: requests sent, answers by status, lost (no HTTP answer at all), wrong (200 with another
request's answer), executed twice (the demo model leaves a "Predicting on <id>" notification per
execution; a drainer reads them back every 0.3 s: a retry anywhere in the path would show here),
and errors outside a restart window. Exit code 0 only when
nothing is lost, wrong or duplicated and every error falls inside a restart window (502 for
requests in flight at the kill, 503 while the server restarts).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from bench.common import REPO, GatewayRun


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` at once: a reader (the gateway's reload, SIGHUP's reading of the
    configuration) sees the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.new")
    partial.write_text(text)
    os.replace(partial, path)

ADMIN_TOKEN = "bench-admin-token-0123456789"  # the one GatewayRun gives the gateway

ENDPOINTS = {"soak_a": 1, "soak_b": 2}  # name -> WEIGHT
WINDOW_MARGIN = 0.5  # seconds around a restart window still counted as inside it




class Soak:
    def __init__(self, url: str, duration: float, clients: int, seed: int, mixed: bool = False,
                 kills: bool = True, config_file: Path | None = None, gateway_pid: int = 0):
        self.url = url
        self.mixed = mixed
        self.kills = kills
        self.config_file = config_file
        self.gateway_pid = gateway_pid
        self.reconfigured = 0
        self.failures: list[str] = []
        self.reloads: Counter[int] = Counter()  # HTTP status of each /reload_server
        self.reload_errors: list[str] = []
        self.duration = duration
        self.clients = clients
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.results: list[tuple[float, float, str, int | None, bool]] = []  # start, end, endpoint, status, ok
        self.executed: Counter[int] = Counter()
        self.windows: list[tuple[str, float, float]] = []
        self.stop = threading.Event()

    def client(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                request_id = next(self.ids)
                name = self.rng.choice(list(ENDPOINTS))
                start = time.monotonic()
                status, ok = None, False
                try:
                    reply = session.post(f"{self.url}/run", json={"SIGNATURE": name, "INPUT_VALUE": request_id},
                                         timeout=15)
                    status = reply.status_code
                    if status == 200:
                        weight = ENDPOINTS[name]
                        expected = f"{request_id}*{weight} + 0 = {request_id * weight} PREDICTED"
                        ok = reply.json()["predict_result"]["dummy_model_predict"] == expected
                    else:
                        ok = "ERROR" in reply.json()
                except requests.RequestException:
                    status = None
                with self.lock:
                    self.results.append((start, time.monotonic(), name, status, ok))
                if status not in (None, 200):
                    time.sleep(0.05)  # a real client backs off on errors

    def drain_notifications(self) -> None:
        """Count executions per request id from the servers' notifications."""
        with requests.Session() as session:
            while True:
                stopping = self.stop.is_set()
                for name in ENDPOINTS:
                    try:
                        notes = session.post(f"{self.url}/notifications", json={"SIGNATURE": name}, timeout=5).json()
                    except (requests.RequestException, ValueError):
                        continue
                    for items in notes.values():
                        for note in items if isinstance(items, list) else ():
                            text = str(note.get("NOTIF", ""))
                            if text.startswith("Predicting on "):
                                self.executed[int(text.rsplit(" ", 1)[1])] += 1
                if stopping:
                    return
                self.stop.wait(0.3)

    def servers(self) -> dict:
        return requests.post(f"{self.url}/list_servers", timeout=5).json()["AVAIL_SERVERS"]

    def killer(self) -> None:
        while not self.stop.is_set():
            if self.stop.wait(self.rng.uniform(0.5, 3.0)):
                return
            name = self.rng.choice(list(ENDPOINTS))
            pid = self.servers()[name]["PID"]
            if pid is None:
                continue
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while not self.stop.is_set():
                info = self.servers()[name]
                if info["STATE"] == "READY" and info["PID"] not in (None, pid):
                    break
                time.sleep(0.05)
            self.windows.append((name, killed_at, time.monotonic()))

    def reloader(self) -> None:
        """Change the endpoint file (a comment: new code, same answers) and reload one endpoint."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        code = self.config_file.parent / "endpoints" / "dummy_model_demo2.py"
        with requests.Session() as session:
            while not self.stop.wait(self.rng.uniform(1.0, 3.0)):
                write_atomically(code, code.read_text().split("\n# reload ")[0] + f"\n# reload {self.rng.random()}\n")
                name = self.rng.choice(list(ENDPOINTS))
                try:
                    reply = session.post(f"{self.url}/reload_server", json={"SIGNATURE": name}, headers=headers,
                                         timeout=60)
                    self.reloads[reply.status_code] += 1
                    if reply.status_code != 200:
                        self.reload_errors.append(reply.text[:300])
                except requests.RequestException:
                    self.reloads[0] += 1

    def configurer(self) -> None:
        """Change the configuration file and send SIGHUP, every 3-5 s."""
        while not self.stop.wait(self.rng.uniform(3.0, 5.0)):
            config = json.loads(self.config_file.read_text())
            endpoints = config["CONFIG_ENDPOINTS"]
            endpoints["soak_a"]["NR_WORKERS"] = 3 if endpoints["soak_a"]["NR_WORKERS"] == 2 else 2
            if "soak_c" in endpoints:
                del endpoints["soak_c"]
            else:
                endpoints["soak_c"] = {**endpoints["soak_b"], "WEIGHT": 3}
            write_atomically(self.config_file, json.dumps(config))
            os.kill(self.gateway_pid, signal.SIGHUP)
            self.reconfigured += 1

    def run(self) -> dict:
        threads = [threading.Thread(target=self.client) for _ in range(self.clients)]
        if self.kills:
            threads.append(threading.Thread(target=self.killer))
        if self.mixed:
            threads.append(threading.Thread(target=self.reloader))
            threads.append(threading.Thread(target=self.configurer))
        threads.append(threading.Thread(target=self.drain_notifications))
        started = self.started = time.monotonic()
        for thread in threads:
            thread.start()
        self.stop.wait(self.duration)
        self.stop.set()
        for thread in threads:
            thread.join(30)
        return self.summary(time.monotonic() - started)

    def in_window(self, name: str, start: float, end: float) -> bool:
        return any(n == name and start <= w_end + WINDOW_MARGIN and end >= w_start - WINDOW_MARGIN
                   for n, w_start, w_end in self.windows)

    def summary(self, elapsed: float) -> dict:
        by_status = Counter(str(status) for _, _, _, status, _ in self.results)
        lost = by_status.pop("None", 0)
        wrong = sum(1 for _, _, _, status, ok in self.results if status is not None and not ok)
        outside_at = [(n, s, start) for start, end, n, s, _ in self.results
                      if s not in (None, 200) and not (s in (502, 503) and self.in_window(n, start, end))]
        outside = [(n, s) for n, s, _ in outside_at]
        restart_times = [round(end - start, 2) for _, start, end in self.windows]
        return {
            "duration_s": round(elapsed, 1),
            "clients": self.clients,
            "sent": len(self.results),
            "answered": dict(sorted(by_status.items())),
            "lost": lost,
            "wrong_answer": wrong,
            "executions_seen": sum(self.executed.values()),
            "executed_twice": sum(1 for count in self.executed.values() if count > 1),
            "errors_outside_restart_windows": len(outside),
            "kills": len(self.windows),
            "kill_to_ready_s": {"min": min(restart_times, default=None), "max": max(restart_times, default=None)},
            "req_per_s": round(len(self.results) / elapsed, 1),
            "errors_outside_sample": [(n, s, round(start - self.started, 2)) for n, s, start in outside_at[:8]],
            "kill_windows": [(n, round(a - self.started, 2), round(b - self.started, 2)) for n, a, b in self.windows],
            **({"reloads": dict(self.reloads), "reload_errors": self.reload_errors[:3],
                "recycles": self.recycles(), "sighup_reconfigurations": self.reconfigured,
                "history": self.history(), "failed_events": self.failures[:3]} if self.mixed else {}),
        }

    def history(self) -> dict[str, int]:
        try:
            events = requests.post(f"{self.url}/system_status", timeout=5).json()["SYSTEM_HISTORY"]["EVENTS"]
        except (requests.RequestException, ValueError, KeyError):
            return {}
        counts = dict(Counter(e["event"] for e in events if e["event"].startswith(("RELOAD", "RECYCLE"))))
        self.failures = [f"{e['event']} {e.get('name')}: {e.get('detail')}" for e in events
                         if e["event"].endswith("FAILED")]
        return counts

    def recycles(self) -> int:
        try:
            return sum(sum(info.get("RECYCLES", {}).values()) for info in self.servers().values())
        except (requests.RequestException, ValueError):
            return -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mixed", action="store_true", help="also reload, recycle and reconfigure under load")
    parser.add_argument("--no-kills", action="store_true", help="no SIGKILLs: every answer must be a 200")
    args = parser.parse_args()
    recycling = {"MAX_REQUESTS": 200, "MAX_REQUESTS_JITTER": 50} if args.mixed else {}
    config = {"SHUTDOWN_GRACE": 5, "CONFIG_ENDPOINTS": {
        name: {"SERVER_CLASS": "dummy_model_demo2", "NR_WORKERS": 2, "WEIGHT": weight, **recycling}
        for name, weight in ENDPOINTS.items()}}
    # Ports for three generations per endpoint: the current one, the next one loading, and the one
    # before still draining (fewer make a reload fall back to in place, which answers 503 meanwhile).
    run = GatewayRun([REPO / "endpoints" / "dummy_model_demo2.py"], config, 3 * (len(ENDPOINTS) + 1), 22000)
    try:
        if run.wait_ready(timeout=30) is None:
            print(run.output(), file=sys.stderr)
            return 2
        summary = Soak(run.url, args.duration, args.clients, args.seed, args.mixed, not args.no_kills,
                       run.app / "config_gateway.txt", run.proc.pid).run()
    finally:
        run.stop()
    print(json.dumps(summary, indent=2))
    clean = (summary["lost"] == summary["wrong_answer"] == summary["executed_twice"]
             == summary["errors_outside_restart_windows"] == 0)
    clean = clean and (summary["kills"] > 0 if not args.no_kills else set(summary["answered"]) == {"200"})
    if args.mixed:
        clean = (clean and set(summary["reloads"]) == {200} and summary["recycles"] > 0
                 and not any(k.endswith("FAILED") for k in summary["history"]))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
