"""The V2 system shared-memory extension against binary V2, with the same 6 MB FP32 tensor.

    .venv/bin/python -m bench.v2shm [--pin] [--duration 5] [--rounds 2] [--concurrency 8]

A gateway with ``ALLOW_CLIENT_SHM`` and ``bench/endpoints/bench_tensor.py`` (the sum of the
tensor's 1,572,864 FP32 numbers), two workers. wrk POSTs ``/v2/models/tensor6m/infer``:

- **binary**: the tensor in the body, after its JSON header (``Inference-Header-Content-Length``);
- **shm**: a body of a few hundred bytes naming a region registered once (``/dev/shm``, made with
  ``tritonclient.utils.shared_memory``), which the model server maps and reads without a copy.

Rounds interleave the two; the medians and their ratio, with the CPU (gateway and model server,
user + kernel) per request.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import numpy as np
import requests

from bench.common import GatewayRun
from bench.load import BENCH, SERVE_CPU, WRK_CPU, CpuMeter, ensure_wrk, wrk
from bench.report import rotated, save_table, side_by_side_parser

COUNT = 1_572_864  # FP32 numbers: 6 MiB


def main() -> int:
    parser = side_by_side_parser(__doc__, 5)
    parser.set_defaults(concurrency="8", rounds=2)
    args = parser.parse_args()
    concurrency = int(args.concurrency)
    import tritonclient.utils.shared_memory as shm

    binary_wrk = ensure_wrk()
    data = np.arange(COUNT, dtype=np.float32) * np.float32(1e-6)
    tensor = {"name": "VALUES", "shape": [COUNT], "datatype": "FP32"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": data.nbytes}}]}).encode()
    bodies = {
        "binary": (header + data.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                             "Content-Type": "application/octet-stream"}),
        "shm": (json.dumps({"inputs": [{**tensor, "parameters": {"shared_memory_region": "bench_in",
                                                                  "shared_memory_byte_size": data.nbytes}}]}).encode(),
                {"Content-Type": "application/json"}),
    }
    config = {"ALLOW_CLIENT_SHM": True, "MAX_BODY_MB": 16, "CONFIG_ENDPOINTS": {
        "tensor6m": {"SERVER_CLASS": "bench_tensor", "NR_WORKERS": 2}}}
    run = GatewayRun(sorted((BENCH / "endpoints").glob("*.py")), config, 1, 25200, env={"BIS_LOG_LEVEL": "WARNING"},
                     cpu=SERVE_CPU if args.pin else None)
    key = f"/bench_v2shm_{os.getpid()}"
    region = shm.create_shared_memory_region("bench_in", key, data.nbytes)
    samples: dict[str, list[dict]] = {"binary": [], "shm": []}
    try:
        if run.wait_ready(timeout=60) is None:
            sys.exit("the gateway did not become ready:\n" + run.output())
        shm.set_shared_memory_region(region, [data])
        requests.post(run.url + "/v2/systemsharedmemory/region/bench_in/register",
                      json={"key": key, "offset": 0, "byte_size": data.nbytes}, timeout=10).raise_for_status()
        url = run.url + "/v2/models/tensor6m/infer"
        for round_no in range(args.rounds):
            for case in rotated(list(bodies), round_no):
                body, headers = bodies[case]
                wrk(binary_wrk, url, body, concurrency, args.warmup, WRK_CPU if args.pin else None, headers)
                meter = CpuMeter({"serving": run.proc.pid})
                meter.start()
                result = wrk(binary_wrk, url, body, concurrency, args.duration, WRK_CPU if args.pin else None,
                             headers)
                cpu = meter.per_request(result["answered"])["serving"]
                result["cpu_us"] = cpu["user"] + cpu["system"]
                samples[case].append(result)
                print(case, result, flush=True)
    finally:
        run.stop()
        shm.destroy_shared_memory_region(region)
    report = {case: {"rps": statistics.median(r["rps"] for r in results),
                     "cpu_us_per_request": statistics.median(r["cpu_us"] for r in results),
                     "rounds": [r["rps"] for r in results], "errors": sum(r["errors"] for r in results)}
              for case, results in samples.items()}
    report["shm/binary"] = round(report["shm"]["rps"] / max(report["binary"]["rps"], 0.1), 2)
    rows = [f"| {key} | {json.dumps(value)} |" for key, value in report.items()]
    save_table("v2shm", "\n".join(["| case | figures |", "|---|---|", *rows]), args, [report])
    return 0


if __name__ == "__main__":
    sys.exit(main())
