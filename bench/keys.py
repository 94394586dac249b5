"""The cost of API keys: the overhead-only model (bench_dummy) at c=64, with keys on (every request
carrying a valid key, no limit in its way) and off, in the same run.

    .venv/bin/python -m bench.keys [--pin] [--duration 5] [--rounds 3] [--concurrency 64]

Two gateways, started one after the other for each round (never both at once), wrk against each;
the medians and the ratio (the target: keys on keeps at least 90 % of the throughput).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

from basic_inference_server.apikeyfile import hash_of
from bench.common import GatewayRun
from bench.load import BENCH, SERVE_CPU, WRK_CPU, ensure_wrk, wrk
from bench.report import save_table, side_by_side_parser

KEY = "bis_bench-key-0123456789abcdef"
CONFIG = {"CONFIG_ENDPOINTS": {"dummy": {"SERVER_CLASS": "bench_dummy", "NR_WORKERS": 4}}}
BODY = {"SIGNATURE": "dummy", "INPUT_VALUE": 3}


def main() -> int:
    parser = side_by_side_parser(__doc__, 5)
    parser.set_defaults(concurrency="64", rounds=3)
    args = parser.parse_args()
    concurrency = int(args.concurrency)
    binary = ensure_wrk()
    folder = tempfile.TemporaryDirectory()
    keys_file = Path(folder.name) / "keys.json"
    keys_file.write_text(json.dumps({"KEYS": [{"NAME": "bench", "SHA256": hash_of(KEY)}]}))
    samples: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for case in ("off", "on"):
            env = {"BIS_LOG_LEVEL": "WARNING", **({"BIS_API_KEYS_FILE": str(keys_file)} if case == "on" else {})}
            run = GatewayRun([BENCH / "endpoints" / "bench_dummy.py"], CONFIG, 1, 25300, env=env,
                             cpu=SERVE_CPU if args.pin else None)
            try:
                if run.wait_ready(timeout=60) is None:
                    sys.exit("the gateway did not become ready:\n" + run.output())
                headers = {"Authorization": f"Bearer {KEY}"} if case == "on" else None
                wrk(binary, run.url + "/run", BODY, concurrency, args.warmup, WRK_CPU if args.pin else None, headers)
                result = wrk(binary, run.url + "/run", BODY, concurrency, args.duration,
                             WRK_CPU if args.pin else None, headers)
                if result["errors"]:
                    sys.exit(f"{case}: {result}")
                samples[case].append(result["rps"])
                print(case, result, flush=True)
            finally:
                run.stop()
    report = {case: {"rps": statistics.median(values), "rounds": values} for case, values in samples.items()}
    report["on/off"] = round(report["on"]["rps"] / report["off"]["rps"], 3)
    rows = [f"| {key} | {json.dumps(value)} |" for key, value in report.items()]
    save_table("keys", "\n".join(["| case | figures |", "|---|---|", *rows]), args, [report])
    return 0


if __name__ == "__main__":
    sys.exit(main())
