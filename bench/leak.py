"""Leak soak: MAX_RSS_MB recycling a model that keeps 1 MB per request, under steady load.

    .venv/bin/python -m bench.leak [--duration 60] [--clients 8] [--max-rss-mb 150]

A gateway serves ``leaky`` (``tests/fixtures/endpoints/leaky_model.py``: every request keeps
1 MB more) with ``MAX_RSS_MB`` and the demo ``dummy_model_demo2``; ``--clients`` threads send
requests to both, half each, for ``--duration`` seconds. Every answer must be a 200; prints the
recycles, the largest RSS a ``leaky`` server reached (what it had kept), and exits 0 only when
nothing failed and the server was recycled.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter

import requests

from bench.common import REPO, GatewayRun


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leak")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-rss-mb", type=float, default=150)
    args = parser.parse_args()
    config = {"SHUTDOWN_GRACE": 5, "CONFIG_ENDPOINTS": {
        "leaky": {"SERVER_CLASS": "leaky_model", "NR_WORKERS": 2, "MAX_RSS_MB": args.max_rss_mb},
        "dummy": {"SERVER_CLASS": "dummy_model_demo2", "NR_WORKERS": 2}}}
    files = [REPO / "tests" / "fixtures" / "endpoints" / "leaky_model.py", REPO / "endpoints" / "dummy_model_demo2.py"]
    run = GatewayRun(files, config, servers=6, port_start=23500)
    statuses: Counter[str] = Counter()
    kept: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        name = "leaky" if index % 2 == 0 else "dummy"
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    reply = session.post(run.url + "/run", json={"SIGNATURE": name, "INPUT_VALUE": 1}, timeout=15)
                    status = str(reply.status_code)
                    result = reply.json().get("predict_result") if reply.status_code == 200 else None
                except requests.RequestException:
                    status, result = "lost", None
                with lock:
                    statuses[f"{name} {status}"] += 1
                    if name == "leaky" and result:
                        kept.append(result["kept_mb"])

    try:
        if run.wait_ready(timeout=30) is None:
            print(run.output(), file=sys.stderr)
            return 2
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        stop.wait(args.duration)
        stop.set()
        for thread in threads:
            thread.join(20)
        time.sleep(0.5)
        info = requests.post(run.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"]["leaky"]
    finally:
        run.stop()
    summary = {"duration_s": args.duration, "clients": args.clients, "max_rss_mb": args.max_rss_mb,
               "answered": dict(sorted(statuses.items())), "recycles": info.get("RECYCLES", {}),
               "generation": info.get("GENERATION"), "most_kept_mb_by_one_server": max(kept, default=0)}
    print(json.dumps(summary, indent=2))
    clean = all(key.endswith(" 200") for key in statuses) and summary["recycles"].get("max_rss", 0) > 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
