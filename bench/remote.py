"""What a remote endpoint (``URLS``) costs the gateway against a local child, in the same rounds.

    .venv/bin/python -m bench.remote [--duration 6] [--rounds 3] [--concurrency 1,8,64] [--pin] [--warmup 2]

One gateway serves the bench dummy model twice: ``dummy``, its own child (the internal channel),
and ``dummy_remote``, a model server of the same endpoint file run on its own by the ``endpoint``
command and reached over HTTP with the shared secret. The same body goes to each with wrk
(one thread, keep-alive connections), interleaved in every round, the order rotating. Reported:
req/s, p50/p99 and the CPU time per answered request of the gateway and of each model server
(user + kernel): the gateway's extra CPU per request for a remote endpoint is the figure that
matters on a 2-core machine (it says nothing about scaling out to other machines). ``--pin``
runs the gateway and both model servers on CPU 1 and wrk on CPU 0. Writes
``bench/results/remote_<stamp>.md/.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.__main__ import MODELS, BenchGateway
from bench.common import REPO, free_port_block, stop_group
from bench.load import BENCH, SERVE_CPU, WRK_CPU, CpuMeter, check_pinning_possible, ensure_wrk, pinned, wrk
from bench.report import medians, save_table, side_by_side_parser

SECRET = "bench-endpoint-secret-0123456789"
CASES = ("local", "remote")
SIGNATURES = {"local": "dummy", "remote": "dummy_remote"}


def start_remote(app: Path, entry: dict, port: int, cpu: str | None) -> subprocess.Popen:
    """The dummy endpoint's model server on its own, in ``app`` (the bench endpoints and a config
    with the gateway's entry for it)."""
    (app / "endpoints").mkdir()
    for path in (BENCH / "endpoints").glob("*.py"):
        shutil.copy(path, app / "endpoints")
    (app / "config_gateway.txt").write_text(json.dumps({"CONFIG_ENDPOINTS": {"dummy_remote": entry}}))
    command = [sys.executable, "-m", "basic_inference_server.gateway.cli", "endpoint", "dummy_remote",
               "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(pinned(command, cpu), cwd=app, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), BIS_ENDPOINT_TOKEN=SECRET,
                                     BIS_LOG_LEVEL="WARNING"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop_group(proc)
    sys.exit("the remote model server did not become ready")


def measure(gateway: BenchGateway, pids: dict[str, int], wrk_binary: str, case: str, concurrency: int,
            args: argparse.Namespace, wrk_cpu: str | None) -> dict:
    body = {"SIGNATURE": SIGNATURES[case], **MODELS["dummy"][1]}
    url = gateway.url + "/run"
    if args.warmup:
        wrk(wrk_binary, url, body, concurrency, args.warmup, wrk_cpu)
    meter = CpuMeter({"gateway": gateway.proc.pid, "server": pids[case]}, recursive=False)
    meter.start()
    result = wrk(wrk_binary, url, body, concurrency, args.duration, wrk_cpu)
    cpu = meter.per_request(result["answered"])
    result["cpu_us"] = {name: times["user"] + times["system"] for name, times in cpu.items()}
    return result


def summarise(samples: dict[tuple[str, int], list[dict]]) -> list[dict]:
    rows = []
    for (case, concurrency), runs in samples.items():
        rows.append({"case": case, "c": concurrency, **medians(runs)})
    local = {r["c"]: r for r in rows if r["case"] == "local"}
    for row in rows:
        base = local[row["c"]]
        row["rps_vs_local"] = round(row["rps"] / base["rps"], 3) if base["rps"] else None
        row["gateway_extra_us"] = row["cpu_gateway_us"] - base["cpu_gateway_us"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | c | req/s | x local | p50 ms | p99 ms | CPU/req gateway µs | gateway extra µs "
             "| CPU/req server µs | errors |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['case']} | {r['c']} | {r['rps']} | {r['rps_vs_local']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['cpu_gateway_us']} | {r['gateway_extra_us']} | {r['cpu_server_us']} | {r['errors']} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    return side_by_side_parser(__doc__, duration=6).parse_args()


def main() -> int:
    args = parse_args()
    if args.pin:
        check_pinning_possible()
    wrk_binary = ensure_wrk()
    levels = [int(c) for c in args.concurrency.split(",")]
    serve_cpu, wrk_cpu = (SERVE_CPU, WRK_CPU) if args.pin else (None, None)
    remote_port = free_port_block(1, 24000)
    remote_entry = {**MODELS["dummy"][0], "URLS": [f"http://127.0.0.1:{remote_port}"]}
    folder = tempfile.TemporaryDirectory()
    remote = start_remote(Path(folder.name), remote_entry, remote_port, serve_cpu)
    os.environ["BIS_ENDPOINT_TOKEN"] = SECRET  # the gateway's copy of the secret (inherited)
    try:
        gateway = BenchGateway(["dummy"], cpu=serve_cpu, extra={"dummy_remote": remote_entry})
    except BaseException:
        stop_group(remote)
        raise
    samples: dict[tuple[str, int], list[dict]] = {}
    try:
        pids = {"local": gateway.servers["dummy"]["PID"], "remote": remote.pid}
        for round_no in range(args.rounds):
            order = CASES[round_no % 2:] + CASES[:round_no % 2]
            for concurrency in levels:
                for case in order:
                    result = measure(gateway, pids, wrk_binary, case, concurrency, args, wrk_cpu)
                    samples.setdefault((case, concurrency), []).append(result)
                    print(f"round {round_no + 1} {case} c={concurrency}: {result['rps']} req/s, "
                          f"gateway {result['cpu_us']['gateway']:.0f} µs/req", file=sys.stderr)
    finally:
        stop_group(remote)
        gateway.stop()
        folder.cleanup()
    rows = summarise(dict(sorted(samples.items(), key=lambda kv: (kv[0][1], CASES.index(kv[0][0])))))
    save_table("remote", table(rows), args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
