"""The benchmark: the gateway against the same model servers called directly, and other serving systems, side by side.

    .venv/bin/python -m bench [--duration 10] [--rounds 3] [--concurrency 1,8,64] [--models dummy,numpy,...]
                              [--pin] [--peers litserve,mosec,aqueduct] [--idle N] [--warmup S]
                              [--stream-format sse|ndjson] [--many-streams N]
    make bench

One gateway runs the bench endpoints of ``bench/endpoints`` (a dummy linear model, a numpy model,
a batch-friendly model with and without batching, a pure-Python CPU model, a 1 MB body, a streamed
answer). For every model and concurrency, each round measures, interleaved, the gateway (two hops),
the model server called directly (one hop) and each peer of ``--peers`` with wrk (Debian's package,
installed by this script when missing and run as root) for ``--duration`` seconds over keep-alive
connections.

The streaming model ``stream`` (50 items, 10 ms apart, the first 10 ms after the model got the
request) is measured with ``bench/streamload.py`` instead of wrk, which sees a stream as one slow
answer: ``c`` connections each running one stream after another, read as they arrive (SSE, or
NDJSON with ``--stream-format ndjson``; LitServe's JSON lines), for the time to first item, items/s,
the whole stream's time and the peak RSS meanwhile. LitServe serves it with ``stream=True``; Mosec
and Aqueduct do not. ``--many-streams N`` then opens N streams at once on the gateway (items 100 ms
apart, a worker thread for each) and reports whether all completed and the RSS meanwhile.

Peers (``bench/peers.py``) serve the models ``dummy``, ``numpy``, ``batch8``, ``large``, ``onnx`` and
``onnx_b8`` (the ONNX iris classifier of examples/onnx_classifier, unbatched and batched) with the
same model code and request bodies, one worker process each, installed on demand in their own
venvs (``bench/.venv-<peer>``); ``--litserve`` is ``--peers litserve``. ``--pin`` runs every serving
process on CPU 1 and wrk (and this script) on CPU 0; the setup of the performance notes is
``--pin --duration 6 --warmup 2 --rounds 2``.

Besides req/s and latency: the mean batch the model server formed (models that batch), the CPU
time per answered request of the gateway, the model server and each peer, the RSS after the
large-body points, and with ``--idle N`` the slow-client check (``bench/checks.py``). Results are the
medians of the rounds; ratios are taken within the same run. Prints a table and writes JSON and
Markdown to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable

import requests

from bench.checks import batch_counts, idle_check, mean_batch, raise_nofile_limit
from bench.common import GatewayRun, free_port_block
from bench.load import (
    BENCH,
    SERVE_CPU,
    WRK_CPU,
    CpuMeter,
    RssPeak,
    affinities,
    check_pinning_possible,
    cpu_shares,
    cpu_ticks,
    ensure_wrk,
    rss_mb,
    stream_load,
    stream_point,
    wrk,
)
from bench.peers import PEERS, PeerProcess, start_peers
from bench.report import CHECK_CONCURRENCY, RESULTS, summarise, write_report
from bench.streamreport import summarise_streams

__all__ = ["MODELS", "RESULTS", "BenchGateway", "ensure_wrk", "wrk"]

# name -> (endpoint config, request body)
MODELS: dict[str, tuple[dict, dict]] = {
    "dummy": ({"SERVER_CLASS": "bench_dummy", "NR_WORKERS": 4}, {"INPUT_VALUE": 3}),
    "numpy": ({"SERVER_CLASS": "bench_numpy", "NR_WORKERS": 2}, {"VALUES": [0.001 * i for i in range(1000)]}),
    "batch_off": ({"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1}, {"INPUT_VALUE": 3}),
    # A batch as large as the highest concurrency: 10 + 0.5 x 64 = 42 ms when full.
    "batch_on": ({"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 64, "MAX_BATCH_WAIT_MS": 2},
                 {"INPUT_VALUE": 3}),
    # The peers' batch setting: at most 8 per call, gathered for at most 2 ms.
    "batch8": ({"SERVER_CLASS": "bench_batch", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 8, "MAX_BATCH_WAIT_MS": 2},
               {"INPUT_VALUE": 3}),
    "cpu": ({"SERVER_CLASS": "bench_cpu", "NR_WORKERS": 2}, {"INPUT_VALUE": 3}),
    "cpu_x2": ({"SERVER_CLASS": "bench_cpu", "NR_WORKERS": 2, "NR_REPLICAS": 2}, {"INPUT_VALUE": 3}),
    # 100,000 floats: a JSON body of about 1 MB.
    "large": ({"SERVER_CLASS": "bench_large", "NR_WORKERS": 2}, {"VALUES": [0.001 * i for i in range(100_000)]}),
    # A real model: the ONNX iris classifier (one flower a request), unbatched and batched as batch8.
    "onnx": ({"SERVER_CLASS": "bench_onnx", "NR_WORKERS": 2}, {"FEATURES": [5.9, 3.0, 4.2, 1.5]}),
    "onnx_b8": ({"SERVER_CLASS": "bench_onnx", "NR_WORKERS": 1, "MAX_BATCH_SIZE": 8, "MAX_BATCH_WAIT_MS": 2},
                {"FEATURES": [5.9, 3.0, 4.2, 1.5]}),
    # A stream holds a worker thread from its first item to its last: one per stream at c=64, and spare.
    "stream": ({"SERVER_CLASS": "bench_stream", "NR_WORKERS": 72}, {}),
}
STREAMED = ("stream",)  # measured with bench/streamload.py, not wrk
SLOW_STREAM = "stream_slow"  # --many-streams


def slow_stream_config(streams: int) -> dict:
    """bench_stream with items 100 ms apart and a worker thread for each of ``streams`` at once
    (at most 256 per model server: replicas for the rest)."""
    replicas = -(-streams // 256)
    return {"SERVER_CLASS": "bench_stream", "GAP_MS": 100.0, "NR_WORKERS": -(-streams // replicas),
            "NR_REPLICAS": replicas, "MAX_QUEUE": max(64, streams)}


def body_of(model: str) -> dict:
    return {"SIGNATURE": model, **(MODELS[model][1] if model in MODELS else {})}


class BenchGateway(GatewayRun):
    """The gateway with the bench endpoints of ``models`` (and the endpoints of ``extra``, name ->
    config), pinned to ``cpu`` when given."""

    def __init__(self, models: list[str], cpu: str | None = None, extra: dict[str, dict] | None = None):
        endpoints = {name: MODELS[name][0] for name in models} | (extra or {})
        config = {"CONFIG_ENDPOINTS": endpoints}
        servers = sum(e.get("NR_REPLICAS", 1) for e in endpoints.values())
        super().__init__(sorted((BENCH / "endpoints").glob("*.py")), config, servers, 23000,
                         env={"BIS_LOG_LEVEL": "WARNING"}, cpu=cpu)
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

    def pids_of(self, model: str) -> list[int]:
        """The model servers of ``model``, every replica."""
        return [info["PID"] for name, info in self.servers.items()
                if name.split("#")[0] == model and isinstance(info.get("PID"), int)]

    def rss_mb(self) -> dict[str, float | None]:
        out = {"gateway": rss_mb([self.proc.pid])}
        for name, info in self.servers.items():
            out[name] = rss_mb([info["PID"]]) if isinstance(info.get("PID"), int) else None
        return out


class Bench:
    """The processes of one run and how to measure one point on each of them."""

    def __init__(self, args: argparse.Namespace, peers: list[str]):
        self.args, self.peer_names = args, peers
        self.wrk_binary = ensure_wrk()
        self.wrk_cpu, self.serve_cpu = (WRK_CPU, SERVE_CPU) if args.pin else (None, None)
        self.peers: dict[tuple[str, str], PeerProcess] = {}
        self.peer_failures: dict[str, str] = {}
        self.gateway: BenchGateway | None = None

    def start(self, models: list[str]) -> None:
        if self.peer_names:
            wanted = [m for m in models if any(m in PEERS[p].models for p in self.peer_names)]
            count = sum(m in PEERS[p].models for p in self.peer_names for m in wanted)
            port = free_port_block(count + 1, 24000)
            self.peers, self.peer_failures = start_peers(self.peer_names, wanted, port,
                                                         {m: body_of(m) for m in wanted}, self.serve_cpu)
        gateway_models = models + (["dummy"] if self.args.idle and "dummy" not in models else [])
        extra = {SLOW_STREAM: slow_stream_config(self.args.many_streams)} if self.args.many_streams else None
        self.gateway = BenchGateway(gateway_models, self.serve_cpu, extra)

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for process in self.peers.values():
            process.stop()

    def systems(self, model: str) -> list[str]:
        return ["gateway", "direct", *(p for p in self.peer_names if (p, model) in self.peers)]

    def server(self, model: str) -> dict:
        return self.gateway.servers[model]

    def _target(self, system: str, model: str) -> tuple[str, dict, CpuMeter, Callable | None, Callable[[], None]]:
        """URL, headers, CPU meter, batch-size reader (models that batch) and drain of ``system`` for ``model``."""
        batching = MODELS[model][0].get("MAX_BATCH_SIZE", 1) > 1  # the peers batch the same models
        if system in ("gateway", "direct"):
            server = self.server(model)
            secret = self.gateway.server_headers(server["PORT"])  # a gateway's server takes its secret
            url, headers = ((self.gateway.url + "/run", {}) if system == "gateway"
                            else (f"http://127.0.0.1:{server['PORT']}/run", secret))
            meter = CpuMeter({"gateway": self.gateway.proc.pid, "server": server["PID"]}, recursive=False)
            batches = functools.partial(batch_counts, server["PORT"], secret) if batching else None
            return url, headers, meter, batches, functools.partial(self.gateway.wait_idle, model)
        peer = self.peers[system, model]
        return (peer.url, {}, CpuMeter({"tree": peer.proc.pid}), peer.batch_counts if batching else None,
                functools.partial(peer.drain, body_of(model)))

    def measure(self, system: str, model: str, concurrency: int) -> dict:
        """One point: wrk's figures, CPU per request, how busy the serving CPU was, the mean batch."""
        if model in STREAMED:
            return self.measure_stream(system, model, concurrency)
        peer = self.peers.get((system, model))
        if peer is not None:
            peer.resume()  # frozen while the others are measured
        try:
            url, headers, meter, batches, drain = self._target(system, model)
            if peer is not None:
                drain()  # it answers again
            body = body_of(model)
            if self.args.warmup > 0:
                wrk(self.wrk_binary, url, body, concurrency, self.args.warmup, self.wrk_cpu, headers)
                drain()
            before = batches() if batches else None
            meter.start()
            ticks = cpu_ticks(self.serve_cpu)
            result = wrk(self.wrk_binary, url, body, concurrency, self.args.duration, self.wrk_cpu, headers)
            result["cpu_us"] = meter.per_request(result["answered"])
            # how busy the serving CPU was (all CPUs when unpinned), and by whom
            result.update(cpu_shares(ticks, cpu_ticks(self.serve_cpu), meter.used_s if self.serve_cpu else None))
            drain()
            if batches:
                result["mean_batch"] = mean_batch(before, batches())
            return result
        finally:
            if peer is not None:
                peer.pause()

    def _rss_groups(self, system: str, model: str) -> dict[str, tuple[list[int], bool]]:
        if system == "gateway":
            return {"gateway": ([self.gateway.proc.pid], False), "server": (self.gateway.pids_of(model), False)}
        if system == "direct":
            return {"server": (self.gateway.pids_of(model), False)}
        return {"tree": ([self.peers[system, model].proc.pid], True)}

    def measure_stream(self, system: str, model: str, concurrency: int) -> dict:
        """One point of a streaming model: the stream load generator's figures, CPU per item, how busy
        the serving CPU was, the peak RSS of the serving processes meanwhile."""
        peer = self.peers.get((system, model))
        if peer is not None:
            peer.resume()
        try:
            url, headers, meter, _, drain = self._target(system, model)
            if peer is not None:
                drain()
            sse = self.args.stream_format == "sse" and system in ("gateway", "direct")  # LitServe: JSON lines
            load = functools.partial(stream_load, url, body_of(model), concurrency, cpu=self.wrk_cpu, sse=sse,
                                     headers=headers)
            peak = RssPeak(self._rss_groups(system, model))
            result = stream_point(load, meter, drain, self.args.warmup, self.args.duration, self.serve_cpu,
                                  peak.sample)
            result["rss_mb_peak"] = peak.peak
            return result
        finally:
            if peer is not None:
                peer.pause()

    def many_streams(self, count: int) -> dict:
        """``count`` streams at once through the gateway (items 100 ms apart): whether every one
        completed, their timings, and the RSS of the gateway and the model servers meanwhile."""
        groups = {"gateway": ([self.gateway.proc.pid], False), "servers": (self.gateway.pids_of(SLOW_STREAM), False)}
        before = {name: rss_mb(pids) for name, (pids, _) in groups.items()}
        peak = RssPeak(groups)
        result = stream_load(self.gateway.url + "/run", body_of(SLOW_STREAM), count, 0, self.wrk_cpu,
                             sse=self.args.stream_format == "sse", once=True, timeout=120, sample=peak.sample)
        after = {name: rss_mb(pids) for name, (pids, _) in groups.items()}
        self.gateway.wait_idle(SLOW_STREAM)
        return {"requested": count, "server_processes": len(groups["servers"][0]), **result,
                "rss_mb_before": before, "rss_mb_peak": peak.peak, "rss_mb_after": after}

    def rss(self) -> dict[str, float | None]:
        out = self.gateway.rss_mb()
        out.update({f"{p}_{m}": process.rss_mb() for (p, m), process in self.peers.items()})
        return out

    def rss_after_large(self, system: str) -> dict[str, float | None]:
        if system == "gateway":
            return {"gateway": rss_mb([self.gateway.proc.pid]), "server": rss_mb([self.server("large")["PID"]])}
        return {system: self.peers[system, "large"].rss_mb()} if system != "direct" else {}

    def pinning(self) -> dict:
        roots = [self.gateway.proc.pid, *(info["PID"] for info in self.gateway.servers.values()
                                          if isinstance(info.get("PID"), int))]
        roots += [process.proc.pid for process in self.peers.values()]
        found = affinities(roots)
        wrong = {pid: cpus for pid, cpus in found.items() if cpus != [int(SERVE_CPU)]}
        summary = (f"all {len(found)} serving processes on CPU {SERVE_CPU}, wrk and this script on CPU {WRK_CPU}"
                   if not wrong else f"{len(wrong)} of {len(found)} serving processes not on CPU {SERVE_CPU}: {wrong}")
        return {"serve_cpu": int(SERVE_CPU), "wrk_cpu": int(WRK_CPU), "processes": len(found),
                "not_pinned": wrong, "summary": summary}

    def idle(self, count: int) -> dict:
        url = self.gateway.url + "/run"
        return idle_check(count, "127.0.0.1", self.gateway.base, self.gateway.proc.pid,
                          lambda: wrk(self.wrk_binary, url, body_of("dummy"), CHECK_CONCURRENCY,
                                      self.args.duration, self.wrk_cpu))


STREAM_SHOWN = ("ttfi_p50_ms", "ttfi_p99_ms", "model_first_ms", "items_per_s", "total_p50_ms", "total_p99_ms",
                "errors", "error_sample", "client_cpu_pct", "rss_mb_peak")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--stream-format", choices=("sse", "ndjson"), default="sse",
                        help="how the gateway and the server direct are asked to stream")
    parser.add_argument("--many-streams", type=int, default=0, metavar="N",
                        help="after the rounds, open N streams at once on the gateway (items 100 ms apart)")
    parser.add_argument("--warmup", type=float, default=0, help="seconds of unmeasured load before each point")
    parser.add_argument("--pin", action="store_true",
                        help=f"serving processes on CPU {SERVE_CPU}, wrk on CPU {WRK_CPU}")
    parser.add_argument("--peers", default="", help=f"also measure these, comma-separated: {','.join(PEERS)}")
    parser.add_argument("--litserve", action="store_true", help="the same as --peers litserve")
    parser.add_argument("--idle", type=int, default=0, metavar="N",
                        help="hold N slow-client connections on the gateway while measuring dummy at c=8")
    args = parser.parse_args()
    args.model_list = [m for m in args.models.split(",") if m]
    args.levels = [int(c) for c in args.concurrency.split(",") if c]
    args.peer_list = [p for p in args.peers.split(",") if p]
    if args.litserve and "litserve" not in args.peer_list:
        args.peer_list.insert(0, "litserve")
    unknown = [m for m in args.model_list if m not in MODELS] + [p for p in args.peer_list if p not in PEERS]
    if unknown:
        parser.error(f"unknown model or peer: {', '.join(unknown)} (models: {', '.join(MODELS)}; "
                     f"peers: {', '.join(PEERS)})")
    return args


def onnx_model_file() -> str:
    """The ONNX model of examples/onnx_classifier, made there the first time (bench/.models/)."""
    import importlib.util

    path = BENCH / ".models" / "iris_classifier.onnx"
    if not path.exists():
        source = BENCH.parent / "examples" / "onnx_classifier" / "endpoints" / "onnx_classifier.py"
        spec = importlib.util.spec_from_file_location("onnx_classifier_example", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.convert(path)
    return str(path)


def main() -> int:
    args = parse_args()
    models, levels = args.model_list, args.levels
    if args.pin:
        check_pinning_possible()
        os.sched_setaffinity(0, {int(WRK_CPU)})  # this script beside wrk, off the serving CPU
    if args.idle or args.many_streams:
        raise_nofile_limit()  # before the gateway starts: it inherits the limit
    if any(model.startswith("onnx") for model in models):
        os.environ["BENCH_ONNX_FILE"] = str(onnx_model_file())  # the gateway and the peers inherit it
    bench = Bench(args, args.peer_list)
    samples: dict[tuple[str, str, int], list[dict]] = {}
    stream_samples: dict[tuple[str, str, int], list[dict]] = {}
    extra: dict = {}
    try:
        bench.start(models)
        extra["pinning"] = bench.pinning() if args.pin else None
        extra["rss_mb_idle"] = bench.rss()
        large_rss: dict[str, float | None] = {}
        for round_no in range(args.rounds):
            for model in models:
                for concurrency in levels:
                    for system in bench.systems(model):
                        result = bench.measure(system, model, concurrency)
                        into = stream_samples if model in STREAMED else samples
                        into.setdefault((system, model, concurrency), []).append(result)
                        shown = {k: v for k, v in result.items() if k in STREAM_SHOWN} if model in STREAMED else {
                            k: v for k, v in result.items() if k not in ("cpu_us", "answered", "sample")}
                        print(f"round {round_no + 1} {system:8} {model:10} c={concurrency:<3} {shown}", flush=True)
                        if model == "large" and concurrency == max(levels):
                            large_rss.update(bench.rss_after_large(system))
        extra["rss_mb_after_load"] = bench.rss()
        if large_rss:
            extra["rss_mb_after_large"] = {"concurrency": max(levels), "rss_mb": large_rss}
        if args.idle:
            print(f"idle check: {args.idle} slow clients on the gateway, dummy at c={CHECK_CONCURRENCY} ...",
                  flush=True)
            extra["idle_check"] = bench.idle(args.idle)
            print(f"idle check: {extra['idle_check']}", flush=True)
        if args.many_streams:
            print(f"many streams: {args.many_streams} at once on the gateway ...", flush=True)
            extra["many_streams"] = bench.many_streams(args.many_streams)
            print(f"many streams: {extra['many_streams']}", flush=True)
    finally:
        bench.stop()
    systems = ["gateway", "direct", *args.peer_list]
    extra["peer_failures"] = bench.peer_failures
    extra["settings"] = {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                         "pinned": args.pin, "load_generator": "wrk -t1, keep-alive"}
    if stream_samples:
        extra["settings"]["stream_load"] = f"bench/streamload.py, keep-alive, {args.stream_format} for gateway/direct"
        extra["streams"] = summarise_streams(stream_samples, systems)
    write_report(summarise(samples, systems, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
