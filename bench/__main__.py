"""The benchmark: the gateway against the same model servers called directly, side by side.

    .venv/bin/python -m bench [--duration 10] [--rounds 3] [--concurrency 1,8,64] [--models dummy,numpy,...]
    make bench

One gateway runs the bench endpoints of ``bench/endpoints`` (a dummy linear model, a numpy model,
a batch-friendly model with and without batching, a pure-Python CPU model). For every model and
concurrency, each round measures, interleaved, the gateway (two hops) and the model server
called directly (one hop) with wrk (Debian's package, installed by this script when missing and
run as root) for ``--duration`` seconds over keep-alive connections. With ``--litserve`` the dummy
and numpy models are also served by LitServe with its defaults (installed in its own venv,
``bench/.venv-litserve``) and measured in the same rounds. Results are the medians of
the rounds; ratios are taken within the same run. Prints a table and writes JSON and Markdown to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from bench.common import REPO, GatewayRun, free_port_block, stop_group

BENCH = REPO / "bench"
RESULTS = BENCH / "results"

# name -> (endpoint config, request body)
MODELS: dict[str, tuple[dict, dict]] = {
    "dummy": ({"SERVER_CLASS": "bench_dummy", "NR_WORKERS": 4}, {"INPUT_VALUE": 3}),
    "numpy": ({"SERVER_CLASS": "bench_numpy", "NR_WORKERS": 2}, {"VALUES": [0.001 * i for i in range(1000)]}),
    "batch_off": ({"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1}, {"INPUT_VALUE": 3}),
    # A batch as large as the highest concurrency: 10 + 0.5 x 64 = 42 ms when full.
    "batch_on": ({"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 64, "MAX_BATCH_WAIT_MS": 2},
                 {"INPUT_VALUE": 3}),
    "cpu": ({"SERVER_CLASS": "bench_cpu", "NR_WORKERS": 2}, {"INPUT_VALUE": 3}),
    "cpu_x2": ({"SERVER_CLASS": "bench_cpu", "NR_WORKERS": 2, "NR_REPLICAS": 2}, {"INPUT_VALUE": 3}),
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


LITSERVE_VENV = BENCH / ".venv-litserve"
LITSERVE_VERSION = "0.2.19"
LITSERVE_MODELS = ("dummy", "numpy")


def ensure_litserve() -> Path:
    python = LITSERVE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITSERVE_VENV)], check=True)
    check = subprocess.run([str(python), "-c", "import litserve, numpy"], capture_output=True)
    if check.returncode != 0:
        print(f"Installing litserve=={LITSERVE_VERSION} into {LITSERVE_VENV} ...", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"litserve=={LITSERVE_VERSION}", "numpy"],
                       check=True)
    return python


class LitServeProcess:
    """One LitServe server (defaults) for one bench model."""

    def __init__(self, python: Path, model: str, port: int):
        self.url = f"http://127.0.0.1:{port}/predict"
        RESULTS.mkdir(parents=True, exist_ok=True)  # LitServe writes a sample client.py into its cwd
        self.proc = subprocess.Popen([str(python), str(BENCH / "litserve_app.py"), model, str(port)], cwd=RESULTS,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        body = MODELS[model][1]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.post(self.url, json=body, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"LitServe for {model} did not start")

    def rss_mb(self) -> float:
        try:
            proc = psutil.Process(self.proc.pid)
            return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        stop_group(self.proc, grace=20)




class BenchGateway(GatewayRun):
    """The gateway with the bench endpoints of ``models``."""

    def __init__(self, models: list[str]):
        config = {"CONFIG_ENDPOINTS": {name: MODELS[name][0] for name in models}}
        servers = sum(MODELS[m][0].get("NR_REPLICAS", 1) for m in models)
        super().__init__(sorted((BENCH / "endpoints").glob("*.py")), config, servers, 23000,
                         env={"BIS_LOG_LEVEL": "WARNING"})
        if self.wait_ready() is None:
            output = self.output()
            self.stop()
            sys.exit("the gateway did not become ready:\n" + output)
        self.servers = requests.get(self.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"]

    def wait_idle(self, model: str, timeout: float = 60) -> None:
        """Wait until the model server has finished what the last point left in its queue
        (requests still queued when wrk stopped would count against the next point)."""
        url = f"http://127.0.0.1:{self.servers[model]['PORT']}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = requests.get(url, timeout=5).json().get("workers", {})
            if not workers.get("busy") and not workers.get("queue"):
                return
            time.sleep(0.05)

    def rss_mb(self) -> dict[str, float]:
        out = {"gateway": round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)}
        for name, info in self.servers.items():
            try:
                out[name] = round(psutil.Process(info["PID"]).memory_info().rss / 2**20, 1)
            except (psutil.Error, TypeError):
                out[name] = None
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--litserve", action="store_true", help="also measure LitServe (installs it in its own venv)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    levels = [int(c) for c in args.concurrency.split(",")]
    binary = ensure_wrk()
    litserve: dict[str, LitServeProcess] = {}
    if args.litserve:
        python = ensure_litserve()
        port = free_port_block(len(LITSERVE_MODELS) + 20, 23000) + 10
        for offset, model in enumerate(m for m in LITSERVE_MODELS if m in models):
            litserve[model] = LitServeProcess(python, model, port + offset)
    gateway = BenchGateway(models)
    samples: dict[tuple[str, str, int], list[dict]] = {}
    try:
        idle_rss = gateway.rss_mb()
        idle_rss.update({f"litserve_{m}": p.rss_mb() for m, p in litserve.items()})
        for round_no in range(args.rounds):
            for model in models:
                body = {"SIGNATURE": model, **MODELS[model][1]}
                direct = f"http://127.0.0.1:{gateway.servers[model]['PORT']}/run"
                for concurrency in levels:
                    systems = [("gateway", gateway.url + "/run"), ("direct", direct)]
                    if model in litserve:
                        systems.append(("litserve", litserve[model].url))
                    for system, url in systems:
                        result = wrk(binary, url, body, concurrency, args.duration)
                        gateway.wait_idle(model)
                        samples.setdefault((system, model, concurrency), []).append(result)
                        print(f"round {round_no + 1} {system:8} {model:10} c={concurrency:<3} {result}", flush=True)
        loaded_rss = gateway.rss_mb()
        loaded_rss.update({f"litserve_{m}": p.rss_mb() for m, p in litserve.items()})
    finally:
        gateway.stop()
        for process in litserve.values():
            process.stop()
    report = summarise(samples, idle_rss, loaded_rss, args)
    write_report(report)
    return 0


def summarise(samples, idle_rss, loaded_rss, args) -> dict:
    rows = []
    for (system, model, concurrency), runs in samples.items():
        rows.append({
            "system": system, "model": model, "concurrency": concurrency,
            **{key: round(statistics.median(r[key] for r in runs), 2) for key in ("rps", "p50_ms", "p99_ms")},
            "errors": sum(r["errors"] for r in runs), "rounds": len(runs),
        })
    by_key = {(r["system"], r["model"], r["concurrency"]): r for r in rows}
    ratios = []
    for (system, model, concurrency), row in by_key.items():
        if system != "gateway":
            continue
        ratio = {"model": model, "concurrency": concurrency}
        direct = by_key.get(("direct", model, concurrency))
        if direct and direct["rps"]:
            ratio["gateway_over_direct"] = round(row["rps"] / direct["rps"], 2)
        lit = by_key.get(("litserve", model, concurrency))
        if lit and lit["rps"]:
            ratio["gateway_over_litserve"] = round(row["rps"] / lit["rps"], 2)
            ratio["p99_gateway_vs_litserve_ms"] = f"{row['p99_ms']} vs {lit['p99_ms']}"
        ratios.append(ratio)
    for c in {r["concurrency"] for r in rows}:
        for label, key, (top, bottom) in (("batch_on/batch_off", "batching_speedup", ("batch_on", "batch_off")),
                                          ("cpu_x2/cpu", "replica_speedup", ("cpu_x2", "cpu"))):
            on, off = by_key.get(("gateway", top, c)), by_key.get(("gateway", bottom, c))
            if on and off and off["rps"]:
                ratios.append({"model": label, "concurrency": c, key: round(on["rps"] / off["rps"], 2)})
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
    lines += ["", "| model | concurrency | gateway / direct | gateway / LitServe | p99 gateway vs LitServe "
              "| batching speed-up | replicas speed-up |", "|---|---|---|---|---|---|---|"]
    for r in sorted(report["ratios"], key=lambda r: (r["model"], r["concurrency"])):
        lines.append(f"| {r['model']} | {r['concurrency']} | {r.get('gateway_over_direct', '')} | "
                     f"{r.get('gateway_over_litserve', '')} | {r.get('p99_gateway_vs_litserve_ms', '')} | "
                     f"{r.get('batching_speedup', '')} | {r.get('replica_speedup', '')} |")
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
