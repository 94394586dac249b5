"""Startup time and idle memory: N dummy endpoints, time from launch to ``/ready``, then RSS.

    .venv/bin/python -m bench.startup [--endpoints 8] [--rounds 3]

Each round starts a fresh gateway on free loopback ports with N copies of the demo endpoint
``dummy_model_demo2``, polls ``/ready`` every 10 ms, records the time until it answers 200, waits
one second, reads the RSS of the gateway and of each model server, and stops the gateway with
SIGTERM. Prints one line per round and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import psutil

from bench.common import REPO, GatewayRun


def one_round(endpoints: int) -> dict:
    config = {"CONFIG_ENDPOINTS": {f"dummy{i}": {"SERVER_CLASS": "dummy_model_demo2", "NR_WORKERS": 2}
                                   for i in range(endpoints)}}
    run = GatewayRun([REPO / "endpoints" / "dummy_model_demo2.py"], config, endpoints, 21000)
    try:
        ready = run.wait_ready(poll=0.01)
        time.sleep(1.0)
        gateway = psutil.Process(run.proc.pid)
        servers = gateway.children()
        return {
            "endpoints": endpoints,
            "ready_s": round(ready, 3) if ready else None,
            "gateway_rss_mb": round(gateway.memory_info().rss / 2**20, 1),
            "server_rss_mb": round(statistics.median(s.memory_info().rss for s in servers) / 2**20, 1),
            "servers": len(servers),
        }
    finally:
        run.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round(args.endpoints) for _ in range(args.rounds)]
    for item in rounds:
        print(json.dumps(item))
    summary = {key: statistics.median(r[key] for r in rounds) for key in ("ready_s", "gateway_rss_mb", "server_rss_mb")}
    print("median:", json.dumps(summary))


if __name__ == "__main__":
    main()
