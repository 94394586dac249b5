"""The benchmark: the gateway against the same model servers called directly, side by side.

    .venv/bin/python -m bench [--duration 10] [--rounds 3] [--concurrency 1,8,64] [--models dummy,numpy,...]
    make bench

One gateway runs the bench endpoints of ``bench/endpoints`` (a dummy linear model, a numpy model,
a batch-friendly model with and without batching, a pure-Python CPU model). For every model and
concurrency, each round measures, interleaved, the gateway (two hops) and the model server
called directly (one hop) with wrk (Debian's package, installed by this script when missing and
run as root) for ``--duration`` seconds over keep-alive connections. Results are the medians of
the rounds; ratios are taken within the same run. Prints a table and writes JSON and Markdown to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
TOKEN = "bench-admin-token-0123456789"

# name -> (endpoint config, request body)
MODELS: dict[str, tuple[dict, dict]] = {
    "dummy": ({"SERVER_CLASS": "bench_dummy", "NR_WORKERS": 4}, {"INPUT_VALUE": 3}),
    "numpy": ({"SERVER_CLASS": "bench_numpy", "NR_WORKERS": 2}, {"VALUES": [0.001 * i for i in range(1000)]}),
    "batch_off": ({"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1}, {"INPUT_VALUE": 3}),
    "batch_on": ({"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 8, "MAX_BATCH_WAIT_MS": 2},
                 {"INPUT_VALUE": 3}),
    "cpu": ({"SERVER_CLASS": "bench_cpu", "NR_WORKERS": 2}, {"INPUT_VALUE": 3}),
}


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("wrk is needed: install it with `sudo apt-get install wrk` (Debian/Ubuntu)")
    print("Installing wrk from Debian's packages ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    return found or sys.exit("could not install wrk")


def wrk(binary: str, url: str, body: dict, concurrency: int, duration: float) -> dict:
    env = dict(os.environ, BENCH_BODY=json.dumps(body))
    proc = subprocess.run(
        [binary, "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--timeout", "10s", "--latency",
         "-s", str(BENCH / "wrk_report.lua"), url],
        env=env, capture_output=True, text=True, timeout=duration + 60,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
            seconds = data["duration_us"] / 1e6
            failed = data["errors"] + data["non2xx"]
            return {
                "rps": round((data["requests"] - failed) / seconds, 1),  # successful answers only
                "p50_ms": round(data["p50_us"] / 1000, 2),
                "p99_ms": round(data["p99_us"] / 1000, 2),
                "errors": failed,
            }
    raise RuntimeError(f"wrk gave no result: {proc.stdout} {proc.stderr}")


def _free_base(count: int) -> int:
    import socket

    for base in range(23000, 32000, 41):  # below the ephemeral range
        ok = True
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


class BenchGateway:
    def __init__(self, models: list[str]):
        self.tmp = tempfile.TemporaryDirectory()
        app = Path(self.tmp.name)
        shutil.copytree(BENCH / "endpoints", app / "endpoints")
        config = {"CONFIG_ENDPOINTS": {name: MODELS[name][0] for name in models}}
        (app / "config_gateway.txt").write_text(json.dumps(config))
        self.base = _free_base(1 + len(models))
        env = dict(os.environ, PYTHONPATH=str(REPO), BIS_ADMIN_TOKEN=TOKEN, BIS_LOG_LEVEL="WARNING")
        self.log = open(app / "gateway.txt", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "basic_inference_server.gateway.cli", "--host", "127.0.0.1",
             "--port", str(self.base), "--first_server_port", str(self.base + 1),
             "--last_server_port", str(self.base + len(models))],
            cwd=app, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.base}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            sys.exit("the gateway did not become ready:\n" + (app / "gateway.txt").read_text())
        self.servers = requests.get(self.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"]

    def rss_mb(self) -> dict[str, float]:
        out = {"gateway": round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)}
        for name, info in self.servers.items():
            try:
                out[name] = round(psutil.Process(info["PID"]).memory_info().rss / 2**20, 1)
            except (psutil.Error, TypeError):
                out[name] = None
        return out

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()
        self.tmp.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    levels = [int(c) for c in args.concurrency.split(",")]
    binary = ensure_wrk()
    gateway = BenchGateway(models)
    samples: dict[tuple[str, str, int], list[dict]] = {}
    try:
        idle_rss = gateway.rss_mb()
        for round_no in range(args.rounds):
            for model in models:
                body = {"SIGNATURE": model, **MODELS[model][1]}
                direct = f"http://127.0.0.1:{gateway.servers[model]['PORT']}/run"
                for concurrency in levels:
                    for system, url in (("gateway", gateway.url + "/run"), ("direct", direct)):
                        result = wrk(binary, url, body, concurrency, args.duration)
                        samples.setdefault((system, model, concurrency), []).append(result)
                        print(f"round {round_no + 1} {system:8} {model:10} c={concurrency:<3} {result}", flush=True)
        loaded_rss = gateway.rss_mb()
    finally:
        gateway.stop()
    report = summarise(samples, idle_rss, loaded_rss, args)
    write_report(report)
    return 0


def summarise(samples, idle_rss, loaded_rss, args) -> dict:
    rows = []
    for (system, model, concurrency), runs in samples.items():
        rows.append({
            "system": system, "model": model, "concurrency": concurrency,
            **{key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")},
            "errors": sum(r["errors"] for r in runs), "rounds": len(runs),
        })
    by_key = {(r["system"], r["model"], r["concurrency"]): r for r in rows}
    ratios = []
    for (system, model, concurrency), row in by_key.items():
        if system == "gateway" and ("direct", model, concurrency) in by_key:
            direct = by_key[("direct", model, concurrency)]
            ratios.append({"model": model, "concurrency": concurrency, "gateway_over_direct":
                           round(row["rps"] / direct["rps"], 2) if direct["rps"] else None})
    batch = {c: (by_key.get(("gateway", "batch_on", c)), by_key.get(("gateway", "batch_off", c))) for c in
             {r["concurrency"] for r in rows}}
    for c, (on, off) in batch.items():
        if on and off and off["rps"]:
            ratios.append({"model": "batch_on/batch_off", "concurrency": c, "gateway_over_direct": None,
                           "batching_speedup": round(on["rps"] / off["rps"], 2)})
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"duration_s": args.duration, "rounds": args.rounds, "load_generator": "wrk -t1, keep-alive"},
        "rows": sorted(rows, key=lambda r: (r["model"], r["concurrency"], r["system"])),
        "ratios": ratios,
        "rss_mb_idle": idle_rss,
        "rss_mb_after_load": loaded_rss,
    }


def write_report(report: dict) -> None:
    lines = ["| system | model | concurrency | req/s (2xx) | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['system']} | {r['model']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['errors']} |")
    lines += ["", "| model | concurrency | gateway / direct | batching speed-up |", "|---|---|---|---|"]
    for r in report["ratios"]:
        lines.append(f"| {r['model']} | {r['concurrency']} | {r.get('gateway_over_direct')} | "
                     f"{r.get('batching_speedup', '')} |")
    lines += ["", f"RSS MB idle: {report['rss_mb_idle']}", f"RSS MB after load: {report['rss_mb_after_load']}",
              f"Machine: {report['machine']}; {report['settings']}"]
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    (RESULTS / f"bench_{stamp}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"bench_{stamp}.md").write_text(text + "\n")
    (RESULTS / "latest.md").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
