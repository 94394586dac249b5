"""The first request's latency of the ONNX example with and without WARMUP_INPUTS.

    .venv/bin/python -m bench.warmup [--runs 5] [--pin]

Starts the gateway of ``examples/onnx_classifier`` (its model file made beforehand, in
``bench/.models/``) ``--runs`` times with the example's WARMUP_INPUTS and ``--runs`` times without,
and times, once ``/ready`` answers, the first ``/run`` (on a connection already open) and the
median of the next 20. Prints a Markdown table of the medians over the runs and writes it to
``bench/results/warmup_<stamp>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import requests

from bench.__main__ import onnx_model_file
from bench.common import REPO, GatewayRun
from bench.load import SERVE_CPU, check_pinning_possible
from bench.report import save_table

EXAMPLE = REPO / "examples" / "onnx_classifier"
ENDPOINT = "onnx_classifier"
BODY = {"SIGNATURE": ENDPOINT, "FEATURES": [[6.7, 3.0, 5.2, 2.3]]}


def one_run(warm: bool, cpu: str | None) -> tuple[float, float]:
    config = json.loads((EXAMPLE / "config_gateway.txt").read_text())
    endpoint = config["CONFIG_ENDPOINTS"][ENDPOINT]
    endpoint["MODEL_FILE"] = onnx_model_file()
    if not warm:
        endpoint.pop("WARMUP_INPUTS", None)
    gateway = GatewayRun(sorted((EXAMPLE / "endpoints").glob("*.py")), config, 1, 24000, cpu=cpu)
    try:
        if gateway.wait_ready() is None:
            sys.exit("the example's gateway did not become ready")
        with requests.Session() as session:
            session.get(gateway.url + "/health", timeout=5)  # the connection is open: only /run is timed
            times = []
            for _ in range(21):
                started = time.perf_counter()
                session.post(gateway.url + "/run", json=BODY, timeout=30).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
        return times[0], statistics.median(times[1:])
    finally:
        gateway.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pin", action="store_true")
    args = parser.parse_args()
    if args.pin:
        check_pinning_possible()
    rows = ["| WARMUP_INPUTS | first request ms | next 20, median ms |", "|---|---|---|"]
    for warm in (False, True):
        runs = [one_run(warm, SERVE_CPU if args.pin else None) for _ in range(args.runs)]
        first, rest = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rows.append(f"| {'yes' if warm else 'no'} | {first:.2f} | {rest:.2f} |")
        print(rows[-1], [round(r[0], 2) for r in runs], file=sys.stderr, flush=True)
    save_table("warmup", "\n".join(rows), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
