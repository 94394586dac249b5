"""The OpenAI chat route (issue 26) against LitServe's OpenAISpec and against the same endpoint's
``/run`` stream, on the same generator: 50 pieces, 10 ms apart.

    .venv/bin/python -m bench.openai [--pin] [--duration 6] [--rounds 3] [--concurrency 1,8,64] [--warmup 2]
                                     [--first-ms 10]

One gateway serves ``chat`` (``bench/endpoints/bench_chat.py`` with ``"OPENAI": "chat"``, a worker
thread for each stream at c=64); LitServe 0.2.19 (in its own venv, ``bench/peers.py``) serves the same
generator behind its ``OpenAISpec`` (``bench/litserve_app.py chat``: one worker process, async, so
that it runs many streams at once). Three cases, each read by ``bench/streamload.py``:

- ``gateway``: ``POST /v1/chat/completions`` with ``{"model": "chat", "messages": [{"role": "user",
  "content": "hi"}], "stream": true}``, read as OpenAI chunks (``--format openai``): a piece is a
  chunk with content; the closing chunk (its finish_reason) and ``data: [DONE]`` are not pieces;
- ``litserve``: the same body to LitServe's ``/v1/chat/completions``, read the same way;
- ``run``: the same body with ``"SIGNATURE": "chat"`` to the gateway's ``/run`` (``Accept:
  text/event-stream``), an item per piece (the ``end`` event is not one).

Each round measures every case at every concurrency, the cases' order rotating from round to round;
LitServe is frozen (SIGSTOP) while the others run; every point has a warm-up and ends when the
system is idle again. Figures are the medians of the rounds. TTFT: from writing the request to the
first piece at the client (the model yields it ``--first-ms`` after it got the request: 10 ms, as
between two pieces, by default; 0 for a generator whose first piece is ready at once, where TTFT is
what serving costs). CPU per piece: user
+ kernel of the gateway and its model server (of LitServe's whole process tree). Targets: the
gateway's TTFT p50 at most 0.8x LitServe's and its pieces/s at least LitServe's at every
concurrency; CPU per piece on ``/v1`` at most 1.10x that on ``/run``. ``--pin`` runs the serving
processes on CPU 1 and the load generator on CPU 0; points where other processes took 5 % or more
of the serving CPU are flagged. Prints the report and writes it (Markdown, JSON) to
``bench/results/openai_<stamp>``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys

import requests

from bench.__main__ import BenchGateway
from bench.common import free_port_block
from bench.load import SERVE_CPU, WRK_CPU, CpuMeter, check_pinning_possible, stream_load, stream_point
from bench.peers import PEERS, PeerProcess, ensure_peer
from bench.report import NOISE_WARN_PCT, rotated, save_table, side_by_side_parser
from bench.streamreport import markdown, summarise_streams

MODEL = "chat"
ENDPOINT = {"SERVER_CLASS": "bench_chat", "OPENAI": "chat", "NR_WORKERS": 72}
ROUTE = "/v1/chat/completions"
REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
PLAIN = {**REQUEST, "stream": False}  # readiness and drains: one JSON answer
CASES = ("gateway", "litserve", "run")  # gateway: /v1 on the gateway; run: /run on the same gateway
TTFT_TARGET, CPU_TARGET = 0.8, 1.10  # the gateway over LitServe, /v1 over /run


def start(pin: bool) -> tuple[BenchGateway, PeerProcess]:
    """LitServe (ready, then frozen) and the gateway, pinned with ``pin``; exits when the gateway's
    chat route does not answer."""
    serve = SERVE_CPU if pin else None
    peer = PeerProcess(PEERS["litserve"], ensure_peer(PEERS["litserve"]), MODEL, free_port_block(1, 24000), serve,
                       route=ROUTE)
    try:
        peer.wait_ready(PLAIN)
        peer.pause()
        gateway = BenchGateway([], serve, extra={MODEL: ENDPOINT})
    except BaseException:
        peer.stop()
        raise
    reply = requests.post(gateway.url + ROUTE, json=PLAIN, timeout=30)
    if reply.status_code != 200:
        gateway.stop()
        peer.stop()
        sys.exit(f"the gateway's {ROUTE} answered HTTP {reply.status_code}: {reply.text[:300]}")
    return gateway, peer


def measure(case: str, gateway: BenchGateway, peer: PeerProcess, concurrency: int, args: argparse.Namespace) -> dict:
    wrk_cpu, serve_cpu = (WRK_CPU, SERVE_CPU) if args.pin else (None, None)
    if case == "litserve":
        url, body = peer.url, REQUEST
        meter, drain = CpuMeter({"tree": peer.proc.pid}), functools.partial(peer.drain, PLAIN)
    else:
        url, body = (gateway.url + ROUTE, REQUEST) if case == "gateway" else (gateway.url + "/run",
                                                                              {"SIGNATURE": MODEL, **REQUEST})
        meter = CpuMeter({"gateway": gateway.proc.pid, "server": gateway.servers[MODEL]["PID"]}, recursive=False)
        drain = functools.partial(gateway.wait_idle, MODEL)
    load = functools.partial(stream_load, url, body, concurrency, cpu=wrk_cpu, openai=case != "run")
    try:
        if case == "litserve":
            peer.resume()
            drain()  # it answers again
        return stream_point(load, meter, drain, args.warmup, args.duration, serve_cpu)
    finally:
        if case == "litserve":
            peer.pause()


def cpu_per_piece(row: dict | None) -> float | None:
    """CPU microseconds per piece of all the processes measured for ``row``."""
    return round(sum(row["cpu_us_per_item"].values()), 1) if row and row["cpu_us_per_item"] else None


def ratio(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 3) if top is not None and bottom else None


def targets(streams: dict, levels: list[int], first_ms: float) -> list[dict]:
    """Per concurrency, the figures of the three targets, their ratios and whether each is met (none
    where a stream failed on the gateway, either route)."""
    rows = {(r["system"], r["concurrency"]): r for r in streams["rows"]}
    out = []
    for c in levels:
        gateway, litserve, run = (rows.get((case, c)) for case in CASES)
        clean = all(r and not r["errors"] for r in (gateway, run))
        point = {"concurrency": c,
                 "ttft_p50_ms": {"gateway": gateway and gateway["ttfi_p50_ms"],
                                 "litserve": litserve and litserve["ttfi_p50_ms"]},
                 "pieces_per_s": {"gateway": gateway and gateway["items_per_s"],
                                  "litserve": litserve and litserve["items_per_s"]},
                 "cpu_us_per_piece": {"v1": cpu_per_piece(gateway), "run": cpu_per_piece(run),
                                      "litserve": cpu_per_piece(litserve)},
                 "errors": {case: r["errors"] if r else None for case, r in zip(CASES, (gateway, litserve, run),
                                                                                 strict=True)}}
        point["ttft_ratio"] = ratio(point["ttft_p50_ms"]["gateway"], point["ttft_p50_ms"]["litserve"])
        # what serving adds before the first piece, beyond the model's own 10 ms
        point["ttft_over_model_ms"] = {name: ms and round(ms - first_ms, 2)
                                       for name, ms in point["ttft_p50_ms"].items()}
        point["ttft_over_model_ratio"] = ratio(point["ttft_over_model_ms"]["gateway"],
                                               point["ttft_over_model_ms"]["litserve"])
        point["pieces_ratio"] = ratio(point["pieces_per_s"]["gateway"], point["pieces_per_s"]["litserve"])
        point["cpu_ratio"] = ratio(point["cpu_us_per_piece"]["v1"], point["cpu_us_per_piece"]["run"])
        point["met"] = {
            "ttft": clean and point["ttft_ratio"] is not None and point["ttft_ratio"] <= TTFT_TARGET,
            "pieces": clean and point["pieces_ratio"] is not None and point["pieces_ratio"] >= 1.0,
            "cpu": clean and point["cpu_ratio"] is not None and point["cpu_ratio"] <= CPU_TARGET}
        out.append(point)
    return out


def _verdict(met: bool) -> str:
    return "met" if met else "**NOT met**"


def report(points: list[dict], streams: dict, args: argparse.Namespace) -> str:
    lines = [f"OpenAI chat route (issue 26): the gateway's `/v1/chat/completions` against LitServe 0.2.19's "
             f"OpenAISpec and against the same endpoint's `/run` stream; 50 pieces 10 ms apart a stream, medians of "
             f"{args.rounds} rounds of {args.duration:g} s. TTFT includes the model's own {args.first_ms:g} ms "
             "before its first piece; \"over model\" is TTFT p50 minus those, what serving adds.", "",
             f"| c | TTFT p50 ms gateway | TTFT p50 ms LitServe | gw/LitServe (<= {TTFT_TARGET:g}) | over model ms "
             "gateway / LitServe (ratio) | pieces/s gateway | pieces/s LitServe | gw/LitServe (>= 1) | "
             f"CPU us/piece /v1 | CPU us/piece /run | /v1 / /run (<= {CPU_TARGET:.2f}) | CPU us/piece LitServe | "
             "failed streams (gw, LitServe, /run) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        ttft, over, pieces, cpu = p["ttft_p50_ms"], p["ttft_over_model_ms"], p["pieces_per_s"], p["cpu_us_per_piece"]
        lines.append(f"| {p['concurrency']} | {ttft['gateway']} | {ttft['litserve']} | {p['ttft_ratio']} "
                     f"{_verdict(p['met']['ttft'])} | {over['gateway']} / {over['litserve']} "
                     f"({p['ttft_over_model_ratio']}) | {pieces['gateway']} | {pieces['litserve']} | "
                     f"{p['pieces_ratio']} {_verdict(p['met']['pieces'])} | {cpu['v1']} | {cpu['run']} | "
                     f"{p['cpu_ratio']} {_verdict(p['met']['cpu'])} | {cpu['litserve']} | "
                     + ", ".join(str(n) for n in p["errors"].values()) + " |")
    for key, what in (("ttft", "TTFT p50"), ("pieces", "pieces/s"), ("cpu", "CPU per piece")):
        missed = [str(p["concurrency"]) for p in points if not p["met"][key]]
        lines.append(f"- {what}: " + ("met at every concurrency" if not missed
                                      else f"**NOT met** at c={', '.join(missed)}"))
    lines += ["", "CPU per piece is counted in clock ticks (10 ms): at c=1 (about 100 pieces/s) a round's figure is "
              "good to about 10 %; the higher concurrencies measure it best.",
              "", "Below, `gateway` is the gateway's `/v1/chat/completions`, `run` its `/run`; CPU per item is per "
              "piece (gateway and model server; LitServe's whole tree)."]
    lines += markdown(streams, None, 8, NOISE_WARN_PCT)
    pinning = f"serving processes on CPU {SERVE_CPU}, load generator on CPU {WRK_CPU}" if args.pin else "not pinned"
    lines += [f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; {pinning}; "
              f"warm-up {args.warmup:g} s; `python -m bench.openai {' '.join(sys.argv[1:])}`"]
    return "\n".join(lines)


def main() -> int:
    parser = side_by_side_parser(__doc__, 6)
    parser.add_argument("--first-ms", type=float, default=10.0,
                        help="the model's own time to its first piece, in every TTFT (default 10: as between pieces)")
    args = parser.parse_args()
    ENDPOINT["FIRST_MS"] = args.first_ms
    os.environ["BENCH_FIRST_MS"] = str(args.first_ms)  # LitServe's twin (a child process: it inherits it)
    if args.pin:
        check_pinning_possible()
    levels = [int(c) for c in args.concurrency.split(",")]
    gateway, peer = start(args.pin)
    samples: dict[tuple[str, str, int], list[dict]] = {}
    try:
        for round_no in range(args.rounds):
            order = rotated(CASES, round_no)
            for concurrency in levels:
                for case in order:
                    result = measure(case, gateway, peer, concurrency, args)
                    samples.setdefault((case, MODEL, concurrency), []).append(result)
                    print(f"round {round_no + 1} {case} c={concurrency}: TTFT p50 {result['ttfi_p50_ms']} ms, "
                          f"{result['items_per_s']} pieces/s, {result['errors']} failed, CPU us/piece "
                          f"{result['cpu_us']}, foreign {result['foreign_pct']} %", file=sys.stderr, flush=True)
    finally:
        gateway.stop()
        peer.stop()
    streams = summarise_streams(samples, list(CASES))
    points = targets(streams, levels, args.first_ms)
    save_table("openai", report(points, streams, args), args, [{"targets": points, "streams": streams}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
