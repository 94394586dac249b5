"""The Open Inference Protocol (V2) against ``/run`` through the same gateway, in the same rounds.

    .venv/bin/python -m bench.v2 [--duration 8] [--rounds 3] [--concurrency 1,8,64] [--pin] [--warmup 2]

Two models, each sent the same numbers three ways with wrk (one thread, keep-alive connections):

- ``numpy`` (``bench/endpoints/bench_numpy.py``, 1,000 floats, about 2 ms of numpy work): ``/run``
  with the floats as a JSON list (the main bench's body), ``/v2/models/numpy/infer`` with a JSON
  FP32 tensor, and the same with the tensor in binary (``Inference-Header-Content-Length``).
- ``tensor1m`` (``bench/endpoints/bench_tensor.py``, a sum): 262,144 FP32 numbers, 1 MiB as a
  binary tensor: ``/run`` with a JSON list of them (about 5 MB of text), V2 JSON, and V2 binary.

Each round measures every case at every concurrency, the cases' order rotating from round to
round; figures are the medians of the rounds, ratios are to ``/run`` at the same concurrency in
the same run. CPU per answered request is the gateway's and the model server's, user + kernel.
``--pin`` runs the gateway and its model servers on CPU 1 and wrk on CPU 0. Prints a Markdown
table and writes it and the JSON to ``bench/results/v2_<stamp>.md/.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bench.__main__ import BenchGateway
from bench.load import SERVE_CPU, WRK_CPU, CpuMeter, check_pinning_possible, ensure_wrk, wrk
from bench.report import medians, rotated, save_table, side_by_side_parser

TENSOR_1M = 262_144  # FP32 numbers in 1 MiB
MODELS = {"numpy": 1000, "tensor1m": TENSOR_1M}
EXTRA = {"tensor1m": {"SERVER_CLASS": "bench_tensor", "NR_WORKERS": 2}}
CASES = ("run", "v2_json", "v2_binary")


def values_of(model: str) -> np.ndarray:
    return (np.arange(MODELS[model], dtype=np.float32) * np.float32(0.001)).astype(np.float32)


def request_of(model: str, case: str) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one case: the same floats each way."""
    values = values_of(model)
    if case == "run":
        return "/run", json.dumps({"SIGNATURE": model, "VALUES": values.tolist()}).encode(), {}
    tensor: dict = {"name": "VALUES", "datatype": "FP32", "shape": [len(values)]}
    path = f"/v2/models/{model}/infer"
    if case == "v2_json":
        return path, json.dumps({"inputs": [{**tensor, "data": values.tolist()}]}).encode(), {}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": values.nbytes}}]}).encode()
    return path, header + values.tobytes(), {"Content-Type": "application/octet-stream",
                                              "Inference-Header-Content-Length": str(len(header))}


def measure(gateway: BenchGateway, wrk_binary: str, model: str, case: str, concurrency: int,
            args: argparse.Namespace, wrk_cpu: str | None) -> dict:
    path, body, headers = request_of(model, case)
    url = gateway.url + path
    if args.warmup:
        wrk(wrk_binary, url, body, concurrency, args.warmup, wrk_cpu, headers)
    gateway.wait_idle(model)
    meter = CpuMeter({"gateway": gateway.proc.pid, "server": gateway.servers[model]["PID"]}, recursive=False)
    meter.start()
    result = wrk(wrk_binary, url, body, concurrency, args.duration, wrk_cpu, headers)
    cpu = meter.per_request(result["answered"])
    result["cpu_us"] = {name: times["user"] + times["system"] for name, times in cpu.items()}
    result["body_bytes"] = len(body)
    gateway.wait_idle(model)
    return result


def summarise(samples: dict[tuple[str, str, int], list[dict]]) -> list[dict]:
    rows = []
    for (model, case, concurrency), runs in samples.items():
        rows.append({"model": model, "case": case, "c": concurrency, "body_bytes": runs[0]["body_bytes"],
                     **medians(runs)})
    by_key = {(r["model"], r["case"], r["c"]): r for r in rows}
    for row in rows:
        base = by_key[(row["model"], "run", row["c"])]
        row["rps_vs_run"] = round(row["rps"] / base["rps"], 3) if base["rps"] else None
        row["p50_vs_run"] = round(row["p50_ms"] / base["p50_ms"], 3) if base["p50_ms"] else None
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | case | c | body KB | req/s | x /run | p50 ms | p50 / /run | p99 ms | CPU/req gw µs "
             "| CPU/req server µs | errors |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['model']} | {r['case']} | {r['c']} | {r['body_bytes'] / 1024:.1f} | {r['rps']} | "
                     f"{r['rps_vs_run']} | {r['p50_ms']} | {r['p50_vs_run']} | {r['p99_ms']} | "
                     f"{r['cpu_gateway_us']} | {r['cpu_server_us']} | {r['errors']} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = side_by_side_parser(__doc__, duration=8)
    parser.add_argument("--models", default=",".join(MODELS))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.pin:
        check_pinning_possible()
    wrk_binary = ensure_wrk()
    models = args.models.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    gateway = BenchGateway([m for m in models if m not in EXTRA], cpu=SERVE_CPU if args.pin else None,
                           extra={m: EXTRA[m] for m in models if m in EXTRA})
    wrk_cpu = WRK_CPU if args.pin else None
    samples: dict[tuple[str, str, int], list[dict]] = {}
    try:
        for round_no in range(args.rounds):
            order = rotated(CASES, round_no)
            for model in models:
                for concurrency in levels:
                    for case in order:
                        result = measure(gateway, wrk_binary, model, case, concurrency, args, wrk_cpu)
                        samples.setdefault((model, case, concurrency), []).append(result)
                        print(f"round {round_no + 1} {model} {case} c={concurrency}: {result['rps']} req/s, "
                              f"p50 {result['p50_ms']} ms", file=sys.stderr)
    finally:
        gateway.stop()
    rows = summarise(dict(sorted(samples.items(), key=lambda kv: (models.index(kv[0][0]), kv[0][2],
                                                                  CASES.index(kv[0][1])))))
    save_table("v2", table(rows), args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
