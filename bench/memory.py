"""The RSS of one model server holding a model of about 200 MB, per worker against shared.

    .venv/bin/python -m bench.memory [--size-mb 200] [--workers 1,4]

Starts a gateway with ``bench/endpoints/bench_weights.py`` (SIZE_MB of weights, every page
written) for each NR_WORKERS of ``--workers``, loaded per worker in ``_load_model`` and once per
process in ``_load_shared``, and reads each model server's RSS (psutil) once it is READY and has
answered a request. Prints a Markdown table with the ratio to NR_WORKERS 1 of the same mode and
writes it to ``bench/results/memory_<stamp>.md``.
"""

from __future__ import annotations

import argparse
import sys
import time

import psutil
import requests

from bench.__main__ import BenchGateway
from bench.report import save_table


def measure(size_mb: float, workers: int, shared: bool) -> float:
    config = {"SERVER_CLASS": "bench_weights", "NR_WORKERS": workers, "SIZE_MB": size_mb, "SHARED": shared}
    gateway = BenchGateway([], extra={"weights": config})
    try:
        answer = requests.post(gateway.url + "/run", json={"SIGNATURE": "weights"}, timeout=30)
        answer.raise_for_status()
        time.sleep(1)  # let the allocator settle
        return psutil.Process(gateway.servers["weights"]["PID"]).memory_info().rss / 1048576
    finally:
        gateway.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200)
    parser.add_argument("--workers", default="1,4")
    args = parser.parse_args()
    levels = [int(n) for n in args.workers.split(",")]
    rows = ["| weights loaded | NR_WORKERS | server RSS MB | x NR_WORKERS 1 |", "|---|---|---|---|"]
    for shared in (False, True):
        base = None
        for workers in levels:
            rss = measure(args.size_mb, workers, shared)
            base = base or rss
            rows.append(f"| {'once per process (_load_shared)' if shared else 'per worker (_load_model)'} "
                        f"| {workers} | {rss:.0f} | {rss / base:.2f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    save_table("memory", "\n".join(rows), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
