"""Load generation for the bench scripts: wrk with a JSON body read from a file, the streaming load
generator (``bench/streamload.py``), CPU pinning, and the CPU time the serving processes spend per
answered request.

Bodies go to wrk through a file (``BENCH_BODY_FILE``, read by ``wrk_report.lua``): Linux limits one
environment string to 128 KB, and the ``large`` model's body is about 1 MB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.debian import NotInstalled, install

BENCH = Path(__file__).resolve().parent
WRK_CPU = "0"  # with --pin: wrk (and this script) on CPU 0, every serving process on CPU 1
SERVE_CPU = "1"


def pinned(command: list[str], cpu: str | None) -> list[str]:
    """``command`` run on ``cpu`` (``taskset -c``), or as it is when ``cpu`` is None. A process
    pinned at launch passes its affinity on to every child it starts later."""
    return ["taskset", "-c", cpu, *command] if cpu is not None else command


def check_pinning_possible() -> None:
    allowed = os.sched_getaffinity(0)
    if not {int(WRK_CPU), int(SERVE_CPU)} <= allowed or not shutil.which("taskset"):
        sys.exit(f"--pin needs CPUs {WRK_CPU} and {SERVE_CPU} and taskset (allowed CPUs: {sorted(allowed)})")


def affinities(pids: list[int]) -> dict[int, list[int]]:
    """CPU affinity of each process of the trees rooted at ``pids`` (to check the pinning)."""
    out = {}
    for proc in tree(pids):
        try:
            out[proc.pid] = sorted(proc.cpu_affinity())
        except psutil.Error:
            pass
    return out


def tree(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
    return procs


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("Installing wrk from Debian's packages ...", file=sys.stderr)
    try:
        install("wrk")
    except NotInstalled as exc:
        sys.exit(f"wrk is needed: {exc}")
    return shutil.which("wrk") or sys.exit("could not install wrk")


def wrk(binary: str, url: str, body: dict | bytes, concurrency: int, duration: float, cpu: str | None = None,
        headers: dict[str, str] | None = None) -> dict:
    """One closed-loop wrk run (one thread, ``concurrency`` keep-alive connections) POSTing ``body``
    (a dict as JSON, or bytes as they are, with ``headers``): successful answers per second,
    p50/p99 latency and the failures (errors + non-2xx)."""
    with tempfile.NamedTemporaryFile("wb", prefix="bench-body-") as body_file:
        body_file.write(body if isinstance(body, bytes) else json.dumps(body).encode())
        body_file.flush()
        extra = "\n".join(f"{name}: {value}" for name, value in (headers or {}).items())
        proc = subprocess.run(
            pinned([binary, "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--timeout", "10s", "--latency",
                    "-s", str(BENCH / "wrk_report.lua"), url], cpu),
            env=dict(os.environ, BENCH_BODY_FILE=body_file.name, BENCH_HEADERS=extra), capture_output=True,
            text=True, timeout=duration + 60,
        )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
            seconds = data["duration_us"] / 1e6
            failed = data["errors"] + data["non2xx"]
            result = {
                "rps": round((data["requests"] - failed) / seconds, 1),  # successful answers only
                "p50_ms": round(data["p50_us"] / 1000, 2),
                "p99_ms": round(data["p99_us"] / 1000, 2),
                "errors": failed,
                "answered": data["requests"] - failed,
            }
            if data["statuses"]:  # answers that were not 2xx, by status, and the first one's body
                result["statuses"], result["sample"] = data["statuses"], data["sample"]
            return result
    raise RuntimeError(f"wrk gave no result: {proc.stdout} {proc.stderr}")


def stream_load(url: str, body: dict, concurrency: int, duration: float, cpu: str | None = None, *,
                sse: bool = True, once: bool = False, timeout: float = 60,
                sample: Callable[[], None] | None = None, every: float = 0.25,
                headers: dict[str, str] | None = None, openai: bool = False) -> dict:
    """One run of ``bench/streamload.py`` on ``cpu``: ``concurrency`` connections streaming answers
    of ``body`` for ``duration`` seconds (with ``once``, one stream each, all at once), read as SSE
    or NDJSON (``openai``: OpenAI chat chunks, pieces counted). ``sample()`` is called every
    ``every`` seconds while it runs (RSS readings)."""
    with tempfile.NamedTemporaryFile("w", prefix="bench-body-", suffix=".json") as body_file:
        body_file.write(json.dumps(body))
        body_file.flush()
        command = [sys.executable, str(BENCH / "streamload.py"), url, "--body", body_file.name,
                   "--concurrency", str(concurrency), "--duration", f"{duration:g}",
                   "--format", "openai" if openai else "sse" if sse else "ndjson", "--timeout", f"{timeout:g}",
                   *(["--once"] if once else []),
                   *(arg for name, value in (headers or {}).items() for arg in ("--header", f"{name}: {value}"))]
        proc = subprocess.Popen(pinned(command, cpu), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        limit = time.monotonic() + (0 if once else duration) + 2 * timeout + 30
        while True:
            try:
                out, err = proc.communicate(timeout=every)
                break
            except subprocess.TimeoutExpired:
                if sample is not None:
                    sample()
                if time.monotonic() > limit:
                    proc.kill()
                    out, err = proc.communicate()
                    break
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"the stream load gave no result (exit {proc.returncode}): {out[-2000:]} {err[-4000:]}")


def stream_point(load: Callable[..., dict], meter: CpuMeter, drain: Callable[[], None], warmup: float,
                 duration: float, serve_cpu: str | None, sample: Callable[[], None] | None = None) -> dict:
    """One measured point of a streamed answer: ``load(seconds, sample=...)`` (a ``stream_load``
    with its target bound) for ``warmup`` seconds, ``drain()``, then for ``duration`` seconds with
    ``meter``'s CPU per item and how busy ``serve_cpu`` was and by whom; ``drain()`` again."""
    if warmup > 0:
        load(warmup)
        drain()
    meter.start()
    ticks = cpu_ticks(serve_cpu)
    result = load(duration, sample=sample)
    result["cpu_us"] = meter.per_request(result["items"])  # per item
    result.update(cpu_shares(ticks, cpu_ticks(serve_cpu), meter.used_s if serve_cpu else None))
    drain()
    return result


class CpuMeter:
    """CPU time (user and kernel) of named process trees between ``start()`` and ``per_request()``.

    A tree is its root and the descendants it had at construction (the peers' worker processes;
    for the gateway and a model server pass ``recursive=False``: their children are counted apart).
    """

    def __init__(self, pids: dict[str, int], recursive: bool = True):
        self.procs: dict[str, list[psutil.Process]] = {}
        for name, pid in pids.items():
            procs = tree([pid]) if recursive else [psutil.Process(pid)]
            self.procs[name] = procs
        self.before: dict[str, tuple[float, float]] = {}
        self.used_s = 0.0  # CPU seconds of all the trees from start() to the last per_request()

    def _times(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, procs in self.procs.items():
            user = system = 0.0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                user, system = user + times.user, system + times.system
            out[name] = (user, system)
        return out

    def start(self) -> None:
        self.before = self._times()

    def per_request(self, answered: int) -> dict[str, dict[str, int]]:
        """Microseconds of user and kernel CPU per answered request since ``start()``."""
        after, count = self._times(), max(1, answered)
        self.used_s = sum(after[name][0] + after[name][1] - sum(self.before[name]) for name in self.procs)
        return {name: {"user": round((after[name][0] - self.before[name][0]) / count * 1e6),
                       "system": round((after[name][1] - self.before[name][1]) / count * 1e6)}
                for name in self.procs}


def cpu_per_request(wrk_binary: str, url: str, body: dict, concurrency: int, duration: float,
                    pids: dict[str, int], cpu: str | None = None, headers: dict[str, str] | None = None) -> dict:
    """wrk's result plus the CPU time (user and kernel, microseconds) each process of ``pids``
    (itself only, not its children) spent per answered request."""
    meter = CpuMeter(pids, recursive=False)
    meter.start()
    result = wrk(wrk_binary, url, body, concurrency, duration, cpu, headers)
    result["cpu_us_per_request"] = meter.per_request(result["answered"])
    return result


def cpu_ticks(cpu: str | None) -> list[int]:
    """/proc/stat jiffies of CPU ``cpu`` (of all CPUs when None): user, nice, system, idle, iowait,
    irq, softirq, steal."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as stat:
        for line in stat:
            fields = line.split()
            if fields[0] == name:
                return [int(v) for v in fields[1:9]] + [0] * (9 - len(fields))
    return [0] * 8


def cpu_shares(before: list[int], after: list[int], measured_s: float | None = None) -> dict[str, float | None]:
    """How busy the CPU was between two ``cpu_ticks`` readings and how much the host stole (%);
    with ``measured_s``, the CPU seconds of the measured processes, also the share of the CPU that
    other processes took ("foreign": another job on the machine skews the point)."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    if total <= 0:
        return {"busy_pct": None, "steal_pct": None, "foreign_pct": None}
    busy = total - delta[3] - delta[4] - delta[7]
    foreign = None
    if measured_s is not None:
        tick = 1 / os.sysconf("SC_CLK_TCK")
        foreign = round(max(0.0, 100 * (busy * tick - measured_s) / (total * tick)), 1)
    return {"busy_pct": round(100 * busy / total, 1), "steal_pct": round(100 * delta[7] / total, 1),
            "foreign_pct": foreign}


def rss_mb(pids: list[int], recursive: bool = False) -> float | None:
    """Resident memory of the processes ``pids`` (with their descendants if ``recursive``), MiB."""
    procs = tree(pids) if recursive else []
    if not recursive:
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                pass
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1) if procs else None


class RssPeak:
    """The highest RSS (MiB) of named groups of processes over ``sample()`` calls: groups are
    name -> (pids, with their descendants or not)."""

    def __init__(self, groups: dict[str, tuple[list[int], bool]]):
        self.groups = groups
        self.peak: dict[str, float | None] = {name: None for name in groups}

    def sample(self) -> None:
        for name, (pids, recursive) in self.groups.items():
            value = rss_mb(pids, recursive)
            if value is not None and (self.peak[name] is None or value > self.peak[name]):
                self.peak[name] = value
