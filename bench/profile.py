"""Profile ``/run`` under load: where the gateway and the model server spend their CPU.

    .venv/bin/python -m bench.profile [--model dummy] [--concurrency 8] [--duration 10]

Starts the bench gateway with one model and drives it with wrk. First, without a profiler, it
measures the CPU time (user and kernel) the gateway and the model server spend per answered
request, through the gateway and direct. Then it samples both processes with py-spy (installed
into this venv when missing) at the same time, keeping only the thread that holds the GIL
(``--gil``): what runs Python code in a process is the thread holding its GIL. Writes the
collapsed stacks to ``bench/results/profile-<process>.txt`` (load them into speedscope or
flamegraph.pl) and prints, per process, the share of samples spent in each library (waitress,
urllib3, http.client, json, ...) and in our own modules.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench.__main__ import MODELS, RESULTS, BenchGateway, onnx_model_file
from bench.load import cpu_per_request, ensure_wrk, wrk

# A sampled frame belongs to the first of these that appears in its file path.
BUCKETS = (
    ("waitress", "(waitress/"),
    ("urllib3", "(urllib3/"),
    ("http.client", "(http/client.py"),
    ("json", "(json/"),
    ("flask/werkzeug", "(flask/"),
    ("flask/werkzeug", "(werkzeug/"),
    ("socket", "(socket.py"),
    ("socket", "(selectors.py"),
    ("threading", "(threading.py"),
    ("queue", "(queue.py"),
    ("gateway", "basic_inference_server/gateway/"),
    ("server", "basic_inference_server/server/"),
    ("ours (shared)", "basic_inference_server/"),
    ("endpoint", "endpoints/"),
)


def ensure_py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
        found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    return found or sys.exit("could not install py-spy")


def record(py_spy: str, pid: int, seconds: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200", "--gil",
         "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarise(collapsed: Path) -> dict:
    """Share of on-CPU samples by the innermost frame's bucket ("self" time) and by any frame on
    the stack ("total" time), from py-spy's collapsed-stack output."""
    self_time: collections.Counter[str] = collections.Counter()
    total_time: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        buckets = [_bucket(frame) for frame in frames]
        self_time[buckets[-1]] += count
        for name in set(buckets):
            total_time[name] += count
    def share(counter: collections.Counter[str]) -> dict[str, float]:
        return {name: round(100 * n / samples, 1) for name, n in counter.most_common()}
    return {"samples": samples, "self_pct": share(self_time), "total_pct": share(total_time)}


def _bucket(frame: str) -> str:
    for name, marker in BUCKETS:
        if marker in frame:
            return name
    return "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dummy", choices=sorted(MODELS))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    wrk_binary, py_spy = ensure_wrk(), ensure_py_spy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.model.startswith("onnx"):
        os.environ["BENCH_ONNX_FILE"] = str(onnx_model_file())  # the gateway's servers inherit it
    gateway = BenchGateway([args.model])
    try:
        pids = {"gateway": gateway.proc.pid, "server": gateway.servers[args.model]["PID"]}
        url = gateway.url + "/run"
        body = {"SIGNATURE": args.model, **MODELS[args.model][1]}
        wrk(wrk_binary, url, body, args.concurrency, 2)  # warm up
        port = gateway.servers[args.model]["PORT"]
        direct_url = f"http://127.0.0.1:{port}/run"
        costs = {"gateway": cpu_per_request(wrk_binary, url, body, args.concurrency, args.duration, pids),
                 "direct": cpu_per_request(wrk_binary, direct_url, body, args.concurrency, args.duration, pids,
                                           headers=gateway.server_headers(port))}
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(
            wrk(wrk_binary, url, body, args.concurrency, args.duration + 2)))
        load.start()
        recorders = []
        for name, pid in pids.items():
            recorders.append(record(py_spy, pid, args.duration, RESULTS / f"profile-{name}.txt"))
        for proc in recorders:
            _, err = proc.communicate(timeout=args.duration + 60)
            if proc.returncode:
                sys.exit(f"py-spy failed: {err.decode(errors='replace')}")
        load.join()
    finally:
        gateway.stop()
    report = {"model": args.model, "concurrency": args.concurrency, "cpu_cost": costs, "load": result,
              "processes": {name: summarise(RESULTS / f"profile-{name}.txt") for name in pids}}
    (RESULTS / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    for path, cost in costs.items():
        per = "; ".join(f"{name} {c['user']} user + {c['system']} kernel"
                        for name, c in cost["cpu_us_per_request"].items())
        print(f"{args.model} c={args.concurrency} {path:<7} {cost['rps']:>7} req/s   CPU us per request: {per}")
    print(f"{args.model} c={args.concurrency} through the gateway under py-spy: {result}")
    for name, data in report["processes"].items():
        print(f"\n{name} ({data['samples']} samples)   self%   total%")
        for bucket, pct in data["total_pct"].items():
            print(f"  {bucket:<16} {data['self_pct'].get(bucket, 0.0):6.1f}  {pct:6.1f}")
    print(f"\ncollapsed stacks: {RESULTS}/profile-gateway.txt, {RESULTS}/profile-server.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
