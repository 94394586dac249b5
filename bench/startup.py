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
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from bench.common import free_port_block

REPO = Path(__file__).resolve().parents[1]




def one_round(endpoints: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp)
        (app / "endpoints").mkdir()
        shutil.copy(REPO / "endpoints" / "dummy_model_demo2.py", app / "endpoints")
        config = {"CONFIG_ENDPOINTS": {f"dummy{i}": {"SERVER_CLASS": "dummy_model_demo2", "NR_WORKERS": 2}
                                       for i in range(endpoints)}}
        (app / "config_gateway.txt").write_text(json.dumps(config))
        base = free_port_block(endpoints + 1, 21000)
        env = dict(os.environ, PYTHONPATH=str(REPO), BIS_ADMIN_TOKEN="bench-token-123456")
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "basic_inference_server.gateway.cli", "--host", "127.0.0.1", "--port", str(base),
             "--first_server_port", str(base + 1), "--last_server_port", str(base + endpoints)],
            cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            ready = None
            while time.monotonic() - started < 60:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{base}/ready", timeout=1) as reply:
                        if reply.status == 200:
                            ready = time.monotonic() - started
                            break
                except OSError:
                    pass
                time.sleep(0.01)
            time.sleep(1.0)
            gateway = psutil.Process(proc.pid)
            servers = gateway.children()
            return {
                "endpoints": endpoints,
                "ready_s": round(ready, 3) if ready else None,
                "gateway_rss_mb": round(gateway.memory_info().rss / 2**20, 1),
                "server_rss_mb": round(statistics.median(s.memory_info().rss for s in servers) / 2**20, 1),
                "servers": len(servers),
            }
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)


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
