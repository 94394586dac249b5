"""Pipelines under load: the gateway's pipeline against Aqueduct's Flow and against a client that
chains ``/run`` calls, on the same three steps (bench/pipeline_steps.py: a 1920 x 1080 x 3 uint8
frame decoded, resized and normalised, classified), and the CPU a pipeline step costs.

    .venv/bin/python -m bench.pipelines [--pin] [--duration 5] [--rounds 2] [--concurrency 8,64]

- **gateway**: ``POST /run {"SIGNATURE": "pipe_flow", "W": 1920, "H": 1080, "SEED": 3}``, wrk on
  ``--concurrency`` connections; the steps are three model servers of two workers each, the frame
  (6 MB) and the tensor (600 KB) going between them through shared memory.
- **aqueduct**: Aqueduct 1.15.0 (its own venv), the same steps as a Flow of three FlowSteps of two
  processes each, the frame and the tensor in its shared memory (``share_value``), the same body.
- **chained**: a client (``--concurrency`` threads) calling ``/run`` of each step in turn, the frame
  and the tensor coming back to it as JSON and sent on to the next step (at c=8 only).
- **overhead**: CPU (user and kernel, gateway and model servers) per request of a pipeline of three
  ``noop`` steps with a small body, against ``/run`` of one ``noop`` step: per extra step.

Rounds are interleaved (gateway, aqueduct, chained, then again); the medians are reported, with the
ratios of the same run. With ``--pin`` every serving process runs on CPU 1 and the load on CPU 0.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

import requests

from bench.common import GatewayRun
from bench.load import BENCH, SERVE_CPU, WRK_CPU, CpuMeter, ensure_wrk, wrk
from bench.peers import PEERS, PeerProcess, ensure_peer
from bench.pipeline_steps import BODY
from bench.report import rotated, save_table, side_by_side_parser

STEPS = ("decode", "preprocess", "classify")


def step(op: str) -> dict:
    return {"SERVER_CLASS": "bench_pipe", "OP": op, "NR_WORKERS": 2, "REQUEST_TIMEOUT": 30}


CONFIG = {
    # The chained client sends the frame back as JSON: 24 MB, 6.2 million values in 2.1 million arrays.
    "MAX_BODY_MB": 200, "MAX_JSON_VALUES": 10_000_000, "MAX_JSON_CONTAINERS": 4_000_000,
    "SHUTDOWN_GRACE": 2,
    "CONFIG_ENDPOINTS": {
        **{f"pipe_{op}": step(op) for op in STEPS},
        "pipe_flow": {"PIPELINE": [f"pipe_{op}" for op in STEPS]},
        "noop_a": step("noop"), "noop_b": step("noop"), "noop_c": step("noop"),
        "noop_flow": {"PIPELINE": ["noop_a", "noop_b", "noop_c"]},
    },
}


def chained(url: str, concurrency: int, duration: float) -> dict:
    """``concurrency`` threads chaining the three steps' /run calls, closed loop: answers per second."""
    done, errors, latencies = [0], [0], []
    stop = time.monotonic() + duration

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    value = session.post(url, json={"SIGNATURE": "pipe_decode", **BODY}, timeout=60).json()
                    for op in STEPS[1:]:
                        answer = session.post(url, data=json.dumps({"SIGNATURE": f"pipe_{op}",
                                                                    "value": value["predict_result"]}),
                                              headers={"Content-Type": "application/json"}, timeout=60)
                        value = answer.json()
                    if "top_k" not in value["predict_result"]:
                        raise ValueError(value)
                    done[0] += 1
                    latencies.append(time.monotonic() - started)
                except (requests.RequestException, ValueError, KeyError):
                    errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    return {"rps": round(done[0] / seconds, 1), "p50_ms": round(statistics.median(latencies) * 1000, 1)
            if latencies else None, "errors": errors[0]}


def overhead(binary: str, run: GatewayRun, pin: bool, duration: float) -> dict:
    """CPU per request of noop_flow (3 steps) and of noop_a alone; the difference per extra step."""
    figures: dict = {}
    for name, signature in (("one_step", "noop_a"), ("three_steps", "noop_flow")):
        meter = CpuMeter({"all": run.proc.pid})  # the gateway and every model server it started
        meter.start()
        result = wrk(binary, run.url + "/run", {"SIGNATURE": signature, "VALUE": 1}, 8, duration,
                     WRK_CPU if pin else None)
        cpu = meter.per_request(result["answered"])["all"]
        figures[name] = {"rps": result["rps"], "cpu_us": cpu["user"] + cpu["system"], "errors": result["errors"]}
    figures["per_extra_step_us"] = round((figures["three_steps"]["cpu_us"] - figures["one_step"]["cpu_us"]) / 2)
    return figures


def main() -> int:
    parser = side_by_side_parser(__doc__, 5)
    parser.set_defaults(concurrency="8,64", rounds=2)
    args = parser.parse_args()
    binary = ensure_wrk()
    levels = [int(c) for c in args.concurrency.split(",")]
    serve = SERVE_CPU if args.pin else None
    endpoints = sorted((BENCH / "endpoints").glob("*.py"))
    run = GatewayRun(endpoints, CONFIG, 8, 25000, env={"BIS_LOG_LEVEL": "WARNING"}, cpu=serve)
    peer = None
    samples: dict[tuple[str, int], list[dict]] = {}
    try:
        if run.wait_ready(timeout=120) is None:
            sys.exit("the gateway did not become ready:\n" + run.output())
        python = ensure_peer(PEERS["aqueduct"])
        peer = PeerProcess(PEERS["aqueduct"], python, "pipeline", 25100, serve)
        peer.wait_ready(BODY)
        url = run.url + "/run"
        targets = {"gateway": (url, {"SIGNATURE": "pipe_flow", **BODY}), "aqueduct": (peer.url, BODY)}
        for round_no in range(args.rounds):
            for concurrency in levels:
                for system in rotated(("gateway", "aqueduct", "chained"), round_no):
                    if system == "chained" and concurrency != 8:
                        continue
                    if system in targets:
                        target, body = targets[system]
                        cpu = WRK_CPU if args.pin else None
                        wrk(binary, target, body, concurrency, args.warmup, cpu)  # (warm: no cold first run)
                        result = wrk(binary, target, body, concurrency, args.duration, cpu)
                    else:
                        result = chained(url, concurrency, args.duration)
                    samples.setdefault((system, concurrency), []).append(result)
                    print(system, concurrency, result, flush=True)
        report: dict = {"overhead": overhead(binary, run, args.pin, args.duration)}
        print("overhead", report["overhead"], flush=True)
    finally:
        if peer is not None:
            peer.stop()
        run.stop()
    rows = []
    for (system, concurrency), results in sorted(samples.items()):
        report[f"{system}@{concurrency}"] = {"rps": statistics.median(r["rps"] for r in results),
                                             "rounds": [r["rps"] for r in results],
                                             "errors": sum(r["errors"] for r in results)}
    for concurrency in levels:
        gateway = report.get(f"gateway@{concurrency}", {}).get("rps")
        for other in ("aqueduct", "chained"):
            theirs = report.get(f"{other}@{concurrency}", {}).get("rps")
            if gateway and theirs:
                report[f"gateway/{other}@{concurrency}"] = round(gateway / theirs, 2)
    for key, value in report.items():
        rows.append(f"| {key} | {json.dumps(value)} |")
    save_table("pipelines", "\n".join(["| measure | figures |", "|---|---|", *rows]), args, [report])
    return 0


if __name__ == "__main__":
    sys.exit(main())
