"""What a remote endpoint (``URLS``) costs the gateway against a local child, in the same rounds.

    .venv/bin/python -m bench.remote [--duration 6] [--rounds 3] [--concurrency 1,8,64] [--pin] [--warmup 2] [--tls]

One gateway serves the bench dummy model twice: ``dummy``, its own child (the internal channel),
and ``dummy_remote``, a model server of the same endpoint file run on its own by the ``endpoint``
command and reached over HTTP with the shared secret. The same body goes to each with wrk
(one thread, keep-alive connections), interleaved in every round, the order rotating. Reported:
req/s, p50/p99 and the CPU time per answered request of the gateway and of each model server
(user + kernel): the gateway's extra CPU per request for a remote endpoint is the figure that
matters on a 2-core machine (it says nothing about scaling out to other machines). ``--pin``
runs the gateway and the model servers on CPU 1 and wrk on CPU 0. ``--tls`` adds ``remote_tls``: a
second server of the same endpoint file serving TLS (a certificate of a private CA made by
trustme), reached at ``https://localhost:<port>``, in the same rounds. Writes
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
SIGNATURES = {"local": "dummy", "remote": "dummy_remote", "remote_tls": "dummy_tls"}


def make_certificates(folder: Path) -> dict[str, str]:
    """A private CA and a certificate for localhost (trustme): the server's and the gateway's variables."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    (folder / "server.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    (folder / "server.key").write_bytes(issued.private_key_pem.bytes())
    (folder / "ca.pem").write_bytes(ca.cert_pem.bytes())
    return {"BIS_TLS_CERT_FILE": str(folder / "server.pem"), "BIS_TLS_KEY_FILE": str(folder / "server.key"),
            "BIS_TLS_CA_FILE": str(folder / "ca.pem")}


def start_remote(app: Path, name: str, entry: dict, port: int, cpu: str | None,
                 tls: dict[str, str] | None = None) -> subprocess.Popen:
    """The dummy endpoint's model server on its own, as endpoint ``name``, in ``app`` (the bench
    endpoints and a config with the gateway's entry for it); over TLS with ``tls``."""
    (app / "endpoints").mkdir(parents=True)
    for path in (BENCH / "endpoints").glob("*.py"):
        shutil.copy(path, app / "endpoints")
    (app / "config_gateway.txt").write_text(json.dumps({"CONFIG_ENDPOINTS": {name: entry}}))
    command = [sys.executable, "-m", "basic_inference_server.gateway.cli", "endpoint", name,
               "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, PYTHONPATH=str(REPO), BIS_ENDPOINT_TOKEN=SECRET, BIS_LOG_LEVEL="WARNING")
    if tls:
        env.update(BIS_TLS_CERT_FILE=tls["BIS_TLS_CERT_FILE"], BIS_TLS_KEY_FILE=tls["BIS_TLS_KEY_FILE"])
    proc = subprocess.Popen(pinned(command, cpu), cwd=app, start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    health = f"{'https://localhost' if tls else 'http://127.0.0.1'}:{port}/health"
    deadline = time.monotonic() + 60
    with requests.Session() as session:
        session.trust_env = False  # REQUESTS_CA_BUNDLE would take the place of the bench's CA
        session.verify = tls["BIS_TLS_CA_FILE"] if tls else True
        while time.monotonic() < deadline:
            try:
                if session.get(health, timeout=1).status_code == 200:
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
    parser = side_by_side_parser(__doc__, duration=6)
    parser.add_argument("--tls", action="store_true", help="add a remote server reached over TLS")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.pin:
        check_pinning_possible()
    wrk_binary = ensure_wrk()
    levels = [int(c) for c in args.concurrency.split(",")]
    serve_cpu, wrk_cpu = (SERVE_CPU, WRK_CPU) if args.pin else (None, None)
    cases = ("local", "remote", "remote_tls") if args.tls else ("local", "remote")
    folder = tempfile.TemporaryDirectory()
    tls = make_certificates(Path(folder.name)) if args.tls else None
    entries, remotes = {}, {}
    try:
        for case in cases[1:]:
            port = free_port_block(1, 24000 + 100 * len(remotes))
            url = f"https://localhost:{port}" if case == "remote_tls" else f"http://127.0.0.1:{port}"
            entries[SIGNATURES[case]] = {**MODELS["dummy"][0], "URLS": [url]}
            remotes[case] = start_remote(Path(folder.name) / case, SIGNATURES[case], entries[SIGNATURES[case]],
                                         port, serve_cpu, tls if case == "remote_tls" else None)
        os.environ["BIS_ENDPOINT_TOKEN"] = SECRET  # the gateway's copy of the secret (inherited)
        if tls:
            os.environ["BIS_TLS_CA_FILE"] = tls["BIS_TLS_CA_FILE"]
        gateway = BenchGateway(["dummy"], cpu=serve_cpu, extra=entries)
    except BaseException:
        for proc in remotes.values():
            stop_group(proc)
        raise
    samples: dict[tuple[str, int], list[dict]] = {}
    try:
        pids = {"local": gateway.servers["dummy"]["PID"], **{case: proc.pid for case, proc in remotes.items()}}
        for round_no in range(args.rounds):
            turn = round_no % len(cases)
            order = cases[turn:] + cases[:turn]
            for concurrency in levels:
                for case in order:
                    result = measure(gateway, pids, wrk_binary, case, concurrency, args, wrk_cpu)
                    samples.setdefault((case, concurrency), []).append(result)
                    print(f"round {round_no + 1} {case} c={concurrency}: {result['rps']} req/s, "
                          f"gateway {result['cpu_us']['gateway']:.0f} µs/req", file=sys.stderr)
    finally:
        for proc in remotes.values():
            stop_group(proc)
        gateway.stop()
        folder.cleanup()
    rows = summarise(dict(sorted(samples.items(), key=lambda kv: (kv[0][1], cases.index(kv[0][0])))))
    save_table("remote", table(rows), args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
