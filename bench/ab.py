"""Two checkouts of the gateway side by side: requests/s and CPU per request, interleaved rounds.

    .venv/bin/python -m bench.ab --before DIR [--after DIR] [--concurrency 1] [--rounds 6] [--model dummy]

Starts one gateway from each checkout (``git worktree add DIR <commit>`` makes one; ``--after``
defaults to this one), both pinned to the serving CPU with wrk on the other, and drives them in
turn, alternating which goes first, for ``--rounds`` rounds of ``--duration`` seconds after a
second of warm-up each. Reports the medians: requests/s, and the CPU time the gateway and its
model server spent per answered request (user + kernel, both processes), and their ratios after /
before. A change too small for the noise of one run shows here, where both run under the same
conditions at the same time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import psutil

from bench.__main__ import MODELS
from bench.common import GatewayRun
from bench.load import SERVE_CPU, WRK_CPU, check_pinning_possible, ensure_wrk, wrk
from bench.report import save_table

BENCH = Path(__file__).resolve().parent


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--after", type=Path, default=BENCH.parent)
    parser.add_argument("--model", default="dummy", choices=sorted(MODELS))
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=3)
    args = parser.parse_args()
    check_pinning_possible()
    binary = ensure_wrk()
    config, body = MODELS[args.model]
    body = {"SIGNATURE": args.model, **body}
    runs = {}
    try:
        for name, base in (("before", 24000), ("after", 24100)):
            runs[name] = GatewayRun(sorted((BENCH / "endpoints").glob("*.py")),
                                    {"CONFIG_ENDPOINTS": {args.model: config}}, 1, base,
                                    env={"PYTHONPATH": str(getattr(args, name).resolve()), "BIS_LOG_LEVEL": "WARNING"},
                                    cpu=SERVE_CPU)
        for run in runs.values():
            if run.wait_ready() is None:
                sys.exit("a gateway did not become ready:\n" + run.output())
        rps: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.rounds):
            order = list(runs.items()) if round_ % 2 == 0 else list(reversed(runs.items()))
            for name, run in order:
                wrk(binary, run.url + "/run", body, args.concurrency, 1, WRK_CPU)
                before = tree_cpu(run.proc.pid)
                result = wrk(binary, run.url + "/run", body, args.concurrency, args.duration, WRK_CPU)
                spent = tree_cpu(run.proc.pid) - before
                rps[name].append(result["rps"])
                cpu[name].append(spent / max(1, result["answered"]) * 1e6)
                print(f"round {round_ + 1} {name:6} {result['rps']:8.0f} req/s {cpu[name][-1]:6.1f} µs/request",
                      file=sys.stderr, flush=True)
    finally:
        for run in runs.values():
            run.stop()
    medians = {name: (statistics.median(rps[name]), statistics.median(cpu[name])) for name in runs}
    rows = [f"| {args.model} c={args.concurrency} | req/s | CPU µs per request |", "|---|---|---|"]
    rows += [f"| {name} ({getattr(args, name)}) | {rate:.0f} | {micros:.1f} |"
             for name, (rate, micros) in medians.items()]
    rows.append(f"| after / before | {medians['after'][0] / medians['before'][0]:.3f} "
                f"| {medians['after'][1] / medians['before'][1]:.3f} |")
    save_table("ab", "\n".join(rows), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
