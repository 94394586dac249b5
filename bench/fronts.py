"""The gateway's ``/run`` behind three HTTP fronts, measured side by side: which front to choose.

    .venv/bin/python -m bench.fronts [--duration 5] [--rounds 3] [--concurrency 1,8,64] [--pin]
                                     [--warmup 1] [--waitress-threads 16,128] [--granian-threads 16,64]

Fronts, all forwarding the dummy model's body to a model server of 4 workers over its Unix socket
with the internal channel's frames (``basic_inference_server/transport/frames.py``):

- ``asyncio``: the gateway as it is (uvloop + httptools, ``/run`` answered in the event loop, many
  requests in flight on one channel connection), with the model server it starts itself;
- ``waitress/<n>t``: ``bench/front_wsgi.py`` (the same work per request as the gateway's ``/run``,
  one blocking channel connection per thread) under waitress with ``n`` threads;
- ``granian/<n>t``: the same WSGI app under granian 2.8 in WSGI mode (Rust HTTP), one worker
  process with ``n`` blocking threads (installed into this venv on demand).

The WSGI fronts share ONE model server that this script starts from a ``ServerSpec``, with the
settings the gateway gives its own (same model, NR_WORKERS 4, MAX_QUEUE 64). Each round measures
every front at every concurrency with wrk (one thread, keep-alive connections), the fronts' order
rotating from round to round; the figures are the medians of the rounds, ratios are to ``asyncio``
at the same concurrency in the same run. CPU per answered request is the front process's (its
process tree for granian: a supervisor and one worker), user + kernel, besides the model server's.
``--pin`` runs every serving process on CPU 1 and wrk (and this script) on CPU 0, and each point
reports how much of CPU 1's busy time was not charged to this run's processes ("others %").
Before starting, the script waits (up to 15 minutes) for the 1-minute load average to fall to
``--max-load`` and the CPUs to be mostly idle for 10 s: figures from a shared machine mislead.
Prints a Markdown table and writes it and the JSON to ``bench/results/fronts_<stamp>.md/.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from basic_inference_server.server.spec import ServerSpec
from bench.common import REPO, GatewayRun, free_port_block, stop_group
from bench.load import (
    BENCH,
    SERVE_CPU,
    WRK_CPU,
    CpuMeter,
    affinities,
    check_pinning_possible,
    cpu_shares,
    cpu_ticks,
    ensure_wrk,
    pinned,
    tree,
    wrk,
)

RESULTS = BENCH / "results"
BODY = {"SIGNATURE": "dummy", "INPUT_VALUE": 3}
ENDPOINT = {"SERVER_CLASS": "bench_dummy", "NR_WORKERS": 4}
GRANIAN = "granian==2.8.7"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/stat counts in these per second
QUIET_POLL_S, QUIET_LIMIT_S = 30, 15 * 60
QUIET_BUSY_PCT = 25.0  # of all CPUs over a 10 s sample, besides the load average
OTHERS_WARN_PCT = 3.0  # of the serving CPU not charged to this run's processes: the point may be disturbed


@dataclass
class Front:
    """One front under test: where to send ``/run``, whose CPU to count, which model server drains."""

    name: str
    url: str
    pid: int
    tree: bool  # count the front's descendants too (not for the gateway: its child is the model server)
    server_pid: int
    server_port: int
    proc: subprocess.Popen | None = None  # None for the gateway (GatewayRun stops it)
    log: Path | None = None
    samples: dict[int, list[dict]] = field(default_factory=dict)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), BIS_LOG_LEVEL="WARNING")


def _launch(command: list[str], cwd: Path, log: Path, cpu: str | None, env: dict[str, str] | None = None):
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(pinned(command, cpu), cwd=cwd, env=env or _env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait(check, proc: subprocess.Popen | None, what: str, log: Path | None, timeout: float = 60) -> None:
    """Poll ``check(session)`` until it is true; raise with the child's output when it dies or times out."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            try:
                if check(session):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
    output = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not become ready; its output:\n{output}")


def _answers(url: str):
    """A readiness check: the dummy body gets the model's answer in the gateway's envelope."""
    return lambda session: {"predict_result", "ver-lib"} <= session.post(url, json=BODY, timeout=5).json().keys()


def _idle(port: int, timeout: float = 30) -> None:
    """Wait until the model server has served what the last point left queued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json().get("workers", {})
        if not workers.get("busy") and not workers.get("queue"):
            return
        time.sleep(0.05)


def ensure_granian() -> str:
    try:
        version = importlib.metadata.version("granian")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    if not version.startswith("2.8."):
        print(f"Installing {GRANIAN} into {sys.prefix} (found: {version or 'none'}) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", GRANIAN], check=True)
        version = importlib.metadata.version("granian")
    return version


class Stack:
    """Every process of the run: the shared model server, the gateway, the WSGI fronts."""

    def __init__(self, args: argparse.Namespace):
        self.cpu = SERVE_CPU if args.pin else None
        self.args = args
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-fronts-")
        self._sockets = tempfile.mkdtemp(prefix="bf-", dir="/tmp")  # short: a socket path holds 108 bytes
        self.app = Path(self._tmp.name)
        self.procs: list[subprocess.Popen] = []
        self.gateway: GatewayRun | None = None
        self.fronts: list[Front] = []

    def start(self) -> None:
        self.gateway = GatewayRun([BENCH / "endpoints" / "bench_dummy.py"], {"CONFIG_ENDPOINTS": {"dummy": ENDPOINT}},
                                  1, 25000, env={"BIS_LOG_LEVEL": "WARNING"}, cpu=self.cpu)
        wsgi_fronts = [("waitress", n) for n in self.args.waitress] + [("granian", n) for n in self.args.granian]
        base = free_port_block(1 + len(wsgi_fronts), 26000)
        server_pid, socket_path = self._start_model_server(base)
        if self.gateway.wait_ready() is None:
            raise RuntimeError("the gateway did not become ready:\n" + self.gateway.output()[-4000:])
        child = requests.get(self.gateway.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"]["dummy"]
        self.fronts.append(Front("asyncio", self.gateway.url + "/run", self.gateway.proc.pid, False,
                                 child["PID"], child["PORT"]))
        for offset, (kind, threads) in enumerate(wsgi_fronts, start=1):
            self.fronts.append(self._start_wsgi(kind, threads, base + offset, socket_path, server_pid, base))
        for front in self.fronts:
            _wait(_answers(front.url), front.proc, front.name, front.log)

    def _start_model_server(self, port: int) -> tuple[int, str]:
        app = self.app / "server"
        (app / "endpoints").mkdir(parents=True)
        shutil.copy(BENCH / "endpoints" / "bench_dummy.py", app / "endpoints")
        socket_path = f"{self._sockets}/dummy.sock"
        spec = ServerSpec(
            name="dummy", server_class="bench_dummy", host="127.0.0.1", port=port, socket_path=socket_path,
            nr_workers=ENDPOINT["NR_WORKERS"], max_queue=64, server_threads=72,  # the gateway's defaults for it
            request_timeout=60.0, max_batch_size=1, max_batch_wait_ms=0.0, endpoint_config=ENDPOINT,
            app_root=str(app), workers_location="endpoints", workers_suffix="Worker", execution_path="/run",
            cache_folder=str(app / "_cache"), host_id="hbench", admin_token=None, max_body_bytes=8 * 1024 * 1024,
            max_json_values=4_000_000, max_json_containers=500_000,
            max_json_depth=256,
            shutdown_grace=5.0, error_file=str(app / "server.error"),
        )
        (app / "spec.json").write_text(spec.to_json())
        log = app / "output.txt"
        proc = _launch([sys.executable, "-m", "basic_inference_server.server", "--config-file", str(app / "spec.json")],
                       app, log, self.cpu)
        self.procs.append(proc)
        _wait(lambda s: s.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200, proc,
              "the model server", log)
        return proc.pid, socket_path

    def _start_wsgi(self, kind: str, threads: int, port: int, socket_path: str, server_pid: int,
                    server_port: int) -> Front:
        log = self.app / f"{kind}_{threads}.txt"
        if kind == "waitress":
            command = [sys.executable, "-m", "bench.front_wsgi", "--socket", socket_path, "--port", str(port),
                       "--threads", str(threads)]
        else:
            command = [sys.executable, "-m", "granian", "--interface", "wsgi", "--factory", "--host", "127.0.0.1",
                       "--port", str(port), "--workers", "1", "--blocking-threads", str(threads), "--http", "1",
                       "--no-ws", "--backlog", "4096", "--log-level", "warning", "bench.front_wsgi:create_app"]
        proc = _launch(command, REPO, log, self.cpu, dict(_env(), BENCH_FRONT_SOCKET=socket_path))
        self.procs.append(proc)
        return Front(f"{kind}/{threads}t", f"http://127.0.0.1:{port}/run", proc.pid, True, server_pid, server_port,
                     proc, log)

    def pinning(self) -> dict:
        roots = [proc.pid for proc in self.procs] + [self.gateway.proc.pid]
        found = affinities(roots)
        wrong = {pid: cpus for pid, cpus in found.items() if cpus != [int(SERVE_CPU)]}
        return {"processes": len(found), "not_pinned": wrong,
                "summary": (f"all {len(found)} serving processes on CPU {SERVE_CPU}, wrk and this script on CPU "
                            f"{WRK_CPU}" if not wrong else f"NOT pinned: {wrong}")}

    def cpu_seconds(self) -> float:
        """CPU time (user + kernel) used so far by every process of the run."""
        total = 0.0
        for proc in tree([p.pid for p in self.procs] + [self.gateway.proc.pid]):
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc, grace=10)
        if self.gateway is not None:
            self.gateway.stop()
        self._tmp.cleanup()
        shutil.rmtree(self._sockets, ignore_errors=True)


def measure(front: Front, concurrency: int, args: argparse.Namespace, wrk_binary: str, stack: Stack) -> dict:
    """One point: wrk's figures, the CPU per answered request of the front and of its model server, how
    busy the serving CPU was and (pinned) how much of it processes outside this run took."""
    wrk_cpu, serve_cpu = (WRK_CPU, SERVE_CPU) if args.pin else (None, None)
    if args.warmup > 0:
        wrk(wrk_binary, front.url, BODY, concurrency, args.warmup, wrk_cpu)
        _idle(front.server_port)
    meters = (CpuMeter({"front": front.pid}, recursive=front.tree), CpuMeter({"server": front.server_pid}, False))
    for meter in meters:
        meter.start()
    ticks, own, started = cpu_ticks(serve_cpu), stack.cpu_seconds(), time.monotonic()
    result = wrk(wrk_binary, front.url, BODY, concurrency, args.duration, wrk_cpu)
    after, own, wall = cpu_ticks(serve_cpu), stack.cpu_seconds() - own, time.monotonic() - started
    result.update(cpu_shares(ticks, after))
    if args.pin:  # busy time of the serving CPU that none of our processes used
        busy = sum(after) - sum(ticks) - sum(after[i] - ticks[i] for i in (3, 4, 7))  # minus idle, iowait, steal
        result["others_pct"] = round(max(0.0, 100 * (busy / CLOCK_TICKS - own) / wall), 1)
    for meter in meters:
        for name, cpu in meter.per_request(result["answered"]).items():
            result[f"{name}_cpu_us"] = cpu["user"] + cpu["system"]
    _idle(front.server_port)
    return result


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def summarise(fronts: list[Front], levels: list[int]) -> list[dict]:
    rows = []
    for front in fronts:
        for c in levels:
            runs = front.samples.get(c, [])
            row = {"front": front.name, "concurrency": c, "rounds_rps": [r["rps"] for r in runs],
                   "errors": sum(r["errors"] for r in runs)}
            for key in ("rps", "p50_ms", "p99_ms", "front_cpu_us", "server_cpu_us", "busy_pct", "steal_pct"):
                row[key] = _median([r.get(key) for r in runs])
            row["others_pct_max"] = max((r["others_pct"] for r in runs if "others_pct" in r), default=None)
            rows.append(row)
    base = {r["concurrency"]: r for r in rows if r["front"] == "asyncio"}
    for row in rows:
        ref = base.get(row["concurrency"])
        row["rps_vs_asyncio"] = round(row["rps"] / ref["rps"], 2) if ref and ref["rps"] and row["rps"] else None
        row["cpu_vs_asyncio"] = (round(row["front_cpu_us"] / ref["front_cpu_us"], 2)
                                 if ref and ref["front_cpu_us"] and row["front_cpu_us"] else None)
    return rows


def markdown(rows: list[dict], extra: dict) -> str:
    def cell(value, fmt="{}"):
        return "" if value is None else fmt.format(value)

    lines = ["| front | c | req/s | p50 ms | p99 ms | front CPU µs/req | server CPU µs/req | req/s ÷ asyncio "
             "| front CPU ÷ asyncio | serving CPU busy % | others % | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["concurrency"], [f["front"] for f in rows].index(r["front"]))):
        lines.append(f"| {r['front']} | {r['concurrency']} | {cell(r['rps'], '{:.0f}')} | {cell(r['p50_ms'])} | "
                     f"{cell(r['p99_ms'])} | {cell(r['front_cpu_us'], '{:.0f}')} | {cell(r['server_cpu_us'], '{:.0f}')}"
                     f" | {cell(r['rps_vs_asyncio'])} | {cell(r['cpu_vs_asyncio'])} | {cell(r['busy_pct'])} | "
                     f"{cell(r['others_pct_max'])} | {r['errors'] or ''} |")
    settings = extra["settings"]
    lines += ["", f"Medians of {settings['rounds']} interleaved rounds of {settings['duration_s']:g} s per point "
              f"(after {settings['warmup_s']:g} s of warm-up), wrk -t1 keep-alive, body {json.dumps(BODY)}. CPU: "
              "user + kernel per answered request; the front's process (granian: its process tree), and the model "
              "server's. asyncio runs its own model server (the gateway's child), the WSGI fronts share one with the "
              "same settings.", "req/s of each round: "
              + "; ".join(f"{r['front']} c={r['concurrency']}: {r['rounds_rps']}" for r in rows)]
    if extra.get("pinning"):
        lines.append(f"Pinning: {extra['pinning']['summary']}")
        worst = max(rows, key=lambda r: r["others_pct_max"] or 0.0)
        flagged = [f"{r['front']} c={r['concurrency']}" for r in rows if (r["others_pct_max"] or 0) > OTHERS_WARN_PCT]
        lines.append(f"Others %: busy time of the serving CPU not charged to this run's processes (other processes, "
                     f"and kernel work such as loopback softirqs charged to no process), the highest of the rounds; "
                     f"at most {worst['others_pct_max']} % ({worst['front']} c={worst['concurrency']})"
                     + (f"; over {OTHERS_WARN_PCT:g} % (possibly disturbed): {', '.join(flagged)}" if flagged else "")
                     + ".")
    before = extra["quiet_before"]
    lines.append(f"Before: load average {before['load']}, CPUs {before['cpus_busy_pct']} % busy over 10 s; "
                 f"load average after: {extra['load_after']}; "
                 f"granian {extra['granian']}; machine: {extra['machine']}")
    return "\n".join(lines)


def _busy_pct(seconds: float = 10) -> float:
    """How busy all CPUs were over the next ``seconds`` (%)."""
    before = cpu_ticks(None)
    time.sleep(seconds)
    return cpu_shares(before, cpu_ticks(None))["busy_pct"] or 0.0


def wait_for_quiet(limit: float) -> dict:
    """Wait until the 1-minute load average is at most ``limit`` and the CPUs are mostly idle for 10 s
    (another benchmark pausing between two points lowers the load average, not the CPU use for long)."""
    deadline = time.monotonic() + QUIET_LIMIT_S
    busy = None
    while limit > 0:
        load = os.getloadavg()[0]
        busy = _busy_pct() if load <= limit else None
        if busy is not None and busy <= QUIET_BUSY_PCT:
            break
        if time.monotonic() > deadline:
            print(f"WARNING: the machine is still busy after {QUIET_LIMIT_S // 60} min: measuring anyway",
                  file=sys.stderr, flush=True)
            break
        print(f"load average {load:.2f}, CPUs {busy if busy is not None else '-'} % busy (limits {limit:g}, "
              f"{QUIET_BUSY_PCT:g} %): waiting {QUIET_POLL_S} s for a quiet machine", file=sys.stderr, flush=True)
        time.sleep(QUIET_POLL_S)
    return {"load": tuple(round(x, 2) for x in os.getloadavg()), "cpus_busy_pct": busy}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per measured point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of unmeasured load before each point")
    parser.add_argument("--pin", action="store_true", help=f"serving processes on CPU {SERVE_CPU}, wrk on {WRK_CPU}")
    parser.add_argument("--waitress-threads", default="16,128", help="one waitress front per thread count")
    parser.add_argument("--granian-threads", default="16,64", help="one granian front per blocking-thread count")
    parser.add_argument("--max-load", type=float, default=1.5,
                        help="wait (up to 15 min) for the 1-minute load average to fall to this first; 0: do not")
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",") if c]
    args.waitress = [int(n) for n in args.waitress_threads.split(",") if n]
    args.granian = [int(n) for n in args.granian_threads.split(",") if n]
    return args


def main() -> int:
    args = parse_args()
    wrk_binary = ensure_wrk()
    granian = ensure_granian() if args.granian else None
    if args.pin:
        check_pinning_possible()
        os.sched_setaffinity(0, {int(WRK_CPU)})  # this script beside wrk, off the serving CPU
    extra: dict = {"quiet_before": wait_for_quiet(args.max_load), "granian": granian,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                               "python": platform.python_version()},
                   "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                                "pinned": args.pin, "load_generator": "wrk -t1, keep-alive"}}
    stack = Stack(args)
    try:
        stack.start()
        extra["pinning"] = stack.pinning() if args.pin else None
        fronts = stack.fronts
        for round_no in range(args.rounds):
            order = fronts[round_no % len(fronts):] + fronts[:round_no % len(fronts)]
            for concurrency in args.levels:
                for front in order:
                    result = measure(front, concurrency, args, wrk_binary, stack)
                    front.samples.setdefault(concurrency, []).append(result)
                    shown = {k: v for k, v in result.items() if k != "answered"}
                    print(f"round {round_no + 1} {front.name:12} c={concurrency:<3} {shown}", flush=True)
    finally:
        stack.stop()
    extra["load_after"] = tuple(round(x, 2) for x in os.getloadavg())
    rows = summarise(stack.fronts, args.levels)
    text = markdown(rows, extra)
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    samples = {f.name: {str(c): runs for c, runs in f.samples.items()} for f in stack.fronts}
    (RESULTS / f"fronts_{stamp}.json").write_text(json.dumps({"rows": rows, "samples": samples, **extra}, indent=2))
    (RESULTS / f"fronts_{stamp}.md").write_text(text + "\n")
    print(f"\nwritten: {RESULTS / f'fronts_{stamp}.md'} and .json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
