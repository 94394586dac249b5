"""Disconnect soak: streams and plain requests under steady load while clients leave mid-answer.

    .venv/bin/python -m bench.disconnects [--duration 60] [--clients 6] [--leavers 100] [--seed 1]

A gateway serves the bench streaming model (``bench/endpoints/bench_stream.py``: 50 items 10 ms
apart) with 8 workers on free loopback ports. ``--clients`` threads read whole streams (and
plain, collected answers) one after another and check that every item came, in order.
Meanwhile ``--leavers`` clients, spread over the duration, open a stream, read a random number of
items, and close the connection without a word, or send a request and close before any answer.

After the load: every worker of the model server must be free within 1 s (``/health``), the
gateway must hold no more client connections than before, and ``bis_cancelled_total`` must
count the streams that were closed while running. Prints a JSON summary; exit code 0 only when
every kept stream was complete, nothing was left busy or open, and every leaver was counted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import socket
import sys
import threading
import time
from collections import Counter

import psutil
import requests

from bench.common import REPO, GatewayRun

ENDPOINT = "bench_stream"
ITEMS = 50


def open_stream(port: int, body: dict) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("POST", "/run", json.dumps(body), {"Accept": "application/x-ndjson",
                                                     "Content-Type": "application/json"})
    return conn


class Run:
    def __init__(self, port: int, duration: float, clients: int, leavers: int, seed: int):
        self.port = port
        self.duration = duration
        self.clients = clients
        self.leavers = leavers
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.left = Counter()

    def count(self, what: str, table: Counter | None = None) -> None:
        with self.lock:
            (self.outcomes if table is None else table)[what] += 1

    def reader(self, seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while not self.stop.is_set():
                if rng.random() < 0.2:  # a client that asks for no stream gets the items collected
                    reply = session.post(f"http://127.0.0.1:{self.port}/run", json={"SIGNATURE": ENDPOINT}, timeout=15)
                    ok = reply.status_code == 200 and len(reply.json()["predict_result"]) == ITEMS
                    self.count("collected_ok" if ok else f"collected_bad_{reply.status_code}")
                    continue
                conn = open_stream(self.port, {"SIGNATURE": ENDPOINT})
                try:
                    response = conn.getresponse()
                    lines = response.read().splitlines()
                    items = [json.loads(line) for line in lines[:-1]]
                    ok = (response.status == 200 and [item["i"] for item in items] == list(range(ITEMS))
                          and "END" in json.loads(lines[-1]))
                    self.count("stream_ok" if ok else "stream_bad")
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    self.count(f"stream_failed_{type(exc).__name__}")
                finally:
                    conn.close()

    def leaver(self, index: int) -> None:
        conn = open_stream(self.port, {"SIGNATURE": ENDPOINT})
        try:
            if index % 4 == 0:  # leaves before its answer has begun
                time.sleep(self.rng.uniform(0, 0.005))
                self.count("before_answer", self.left)
            else:
                response = conn.getresponse()
                for _ in range(self.rng.randint(1, ITEMS - 5)):
                    response.readline()
                self.count("mid_stream", self.left)
        except (OSError, http.client.HTTPException):
            self.count("error", self.left)
        finally:
            if conn.sock is not None:
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    def run(self) -> None:
        readers = [threading.Thread(target=self.reader, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in readers:
            thread.start()
        started = time.monotonic()
        for index in range(self.leavers):
            due = started + self.duration * (index + 0.5) / self.leavers
            self.stop.wait(max(0.0, due - time.monotonic()))
            threading.Thread(target=self.leaver, args=(index,), daemon=True).start()
        self.stop.wait(max(0.0, started + self.duration - time.monotonic()))
        self.stop.set()
        for thread in readers:
            thread.join(20)


def cancelled(url: str) -> dict[str, float]:
    text = requests.get(url + "/metrics", timeout=5).text
    out = {}
    for stage in ("queued", "running"):
        match = re.search(rf'bis_cancelled_total\{{signature="{ENDPOINT}",stage="{stage}"\}} (\S+)', text)
        out[stage] = float(match.group(1)) if match else 0.0
    return out


def client_connections(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.disconnects")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--leavers", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    config = {"SERVER_NAME": "disconnects", "CONFIG_ENDPOINTS": {
        ENDPOINT: {"NR_WORKERS": 8, "MAX_QUEUE": 64, "REQUEST_TIMEOUT": 10}}}
    gateway = GatewayRun([REPO / "bench" / "endpoints" / f"{ENDPOINT}.py"], config, servers=1, port_start=27000)
    try:
        if gateway.wait_ready() is None:
            print(gateway.output(), file=sys.stderr)
            return 2
        before = client_connections(gateway.proc.pid, gateway.base)
        run = Run(gateway.base, args.duration, args.clients, args.leavers, args.seed)
        run.run()
        ended = time.monotonic()
        server = requests.post(gateway.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"][ENDPOINT]
        health_url = f"http://127.0.0.1:{server['PORT']}/health"
        busy = None
        while time.monotonic() - ended < 5:
            busy = requests.get(health_url, timeout=5).json()["workers"]["busy"]
            if busy == 0:
                break
            time.sleep(0.05)
        freed_after = time.monotonic() - ended
        time.sleep(0.5)
        counts = cancelled(gateway.url)
        summary = {
            "duration_s": args.duration, "outcomes": dict(run.outcomes), "leavers": dict(run.left),
            "busy_workers_after": busy, "workers_free_after_s": round(freed_after, 2),
            "client_connections_before": before,
            "client_connections_after": client_connections(gateway.proc.pid, gateway.base),
            "cancelled": counts,
        }
        print(json.dumps(summary, indent=2))
        bad = [k for k in run.outcomes if not k.endswith("_ok")]
        mid = run.left["mid_stream"]
        ok = (not bad and busy == 0 and freed_after <= 1.0 and summary["client_connections_after"] <= before
              and counts["running"] + counts["queued"] >= mid and run.left["error"] == 0)
        return 0 if ok else 1
    finally:
        gateway.stop()


if __name__ == "__main__":
    sys.exit(main())
