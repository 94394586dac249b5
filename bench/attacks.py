"""Hostile clients against one gateway, attack by attack: what the other clients and every process see.

    .venv/bin/python -m bench.attacks [--pin] [--duration 5] [--connections 2,16] [--idle 20000]
                                      [--only containers_unknown,containers_target,...]

A gateway serves three bench endpoints on free loopback ports: ``other`` (bench_dummy, nobody
attacks it), ``target`` (bench_dummy) and ``stream`` (bench_stream). For each attack, wrk measures
``other`` (4 keep-alive connections, p50 and p99) while the attack runs for ``--duration`` seconds,
after a baseline without it; every process's RSS is sampled before, during (peak) and 5 s after,
and the attacked servers' restarts are counted. With ``--pin`` the gateway and its model servers
run on CPU 1, wrk and the attackers on CPU 0. The attacks (issue 22):

- ``containers_unknown``, ``containers_target``, ``containers_stream``: N connections (each of
  ``--connections``) resending an 8 MB body of tiny nested arrays (``[[[[[[[[[[]]]]]]]]]],``), with
  an unknown SIGNATURE, or naming ``target`` or ``stream``;
- ``declared``: 250 connections declaring an 8 MB body and sending one byte, to the gateway and to
  ``target``'s own port;
- ``idle``: ``--idle`` connections (in helper processes) that each get one ``/health`` answer and
  stay idle on keep-alive, then 500 new clients, each on a new connection: how many are served;
- ``direct``: ``/run`` on ``target``'s own port without its secret;
- ``jobs_containers``, ``batch_containers``, ``jobs_flood``: N connections submitting the 8 MB body
  of nested arrays as a job of ``target``, an 8 MB batch of 80 such jobs of 100 KB each, or small
  jobs as fast as they are answered (each a durable submission);
- ``openai_containers``, ``openai_abandon``: OpenAI's chat route (``chat``, bench_chat): the 8 MB
  body of nested arrays naming it as ``model``, or streams of 100,000 pieces that each client
  leaves after its answer's first bytes;
- ``mistakes``: an admin TOKEN of ``"\\ud800"``, ``1e400``, an unpaired surrogate, and a V2 BYTES
  input of 2,000,000 empty elements: their statuses, and the V2 one's time.

Prints JSON (one object per attack) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import requests

from bench.checks import raise_nofile_limit
from bench.common import REPO, GatewayRun
from bench.load import SERVE_CPU, WRK_CPU, check_pinning_possible, ensure_wrk, rss_mb, wrk

EIGHT_MB = 8 * 1024 * 1024
_UNIT = b"[[[[[[[[[[]]]]]]]]]],"
OTHER = {"SIGNATURE": "other", "INPUT_VALUE": 3}
CONFIG = {"SERVER_NAME": "attacks", "ALLOW_CLIENT_SHM": True, "CONFIG_ENDPOINTS": {
    "other": {"SERVER_CLASS": "bench_dummy", "NR_WORKERS": 2},
    "target": {"SERVER_CLASS": "bench_dummy", "NR_WORKERS": 2},
    "stream": {"SERVER_CLASS": "bench_stream", "NR_WORKERS": 2},
    "pipe_a": {"SERVER_CLASS": "bench_pipe", "OP": "noop", "NR_WORKERS": 2},
    "pipe_b": {"SERVER_CLASS": "bench_pipe", "OP": "noop", "NR_WORKERS": 2},
    "flow": {"PIPELINE": ["pipe_a", "pipe_b"]},
    "chat": {"SERVER_CLASS": "bench_chat", "OPENAI": "chat", "NR_WORKERS": 2, "ITEMS": 100_000},
}}
CHAT = b"/v1/chat/completions"


Attack = Callable[[threading.Event, threading.Event], dict]  # (stop, ready) -> what it saw


def containers(signature: bytes | None, key: bytes = b"SIGNATURE") -> bytes:
    head = b'{"%s": "%s", "x": [' % (key, signature) if signature else b'{"x": ['
    return head + _UNIT * ((EIGHT_MB - len(head) - 8) // len(_UNIT)) + b"[]]}"


def post(body: bytes, path: bytes = b"/run", extra: bytes = b"", content_type: bytes = b"application/json") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path, content_type, len(body), extra)) + body


def ndjson_containers(signature: bytes) -> bytes:
    """An 8 MB batch: 80 lines, each a job for ``signature`` carrying 100 KB of nested arrays."""
    head = b'{"SIGNATURE": "%s", "custom_id": "x", "x": [' % signature
    line = head + _UNIT * ((100_000 - len(head) - 4) // len(_UNIT)) + b"[]]}"
    return b"\n".join([line] * (EIGHT_MB // (len(line) + 1)))


def status_of(port: int, request: bytes, timeout: float = 60) -> int:
    """Send ``request`` on a new connection; its answer's status (0: no answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            head = sock.recv(4096)
        return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        return 0


class Gateway:
    """The gateway under attack, its processes and their memory."""

    def __init__(self, pin: bool):
        self.run = GatewayRun([REPO / "bench" / "endpoints" / f"{n}.py" for n in ("bench_dummy", "bench_stream",
                                                                                 "bench_pipe", "bench_chat")],
                              CONFIG, servers=6, port_start=24000, cpu=SERVE_CPU if pin else None)
        if self.run.wait_ready() is None:
            sys.exit(self.run.output())
        self.port = self.run.base

    def servers(self) -> dict:
        return requests.post(self.run.url + "/list_servers", timeout=10).json()["AVAIL_SERVERS"]

    def memory(self) -> dict[str, float | None]:
        pids = {"gateway": self.run.proc.pid, **{name: info["PID"] for name, info in self.servers().items()}}
        return {name: rss_mb([pid]) for name, pid in pids.items()}


def measured(gateway: Gateway, wrk_binary: str, duration: float, cpu: str | None,
             attack: Attack) -> dict:
    """wrk on ``other`` without, then with the attack running; memory before, peak, 5 s after."""
    baseline = wrk(wrk_binary, gateway.run.url + "/run", OTHER, 4, min(duration, 3), cpu)
    before, servers_before = gateway.memory(), gateway.servers()
    stop, ready, found, peak = threading.Event(), threading.Event(), {}, dict(before)
    attacker = threading.Thread(target=lambda: found.update(attack(stop, ready)), daemon=True)
    attacker.start()
    sampler_stop = threading.Event()

    def sample() -> None:
        while not sampler_stop.wait(0.2):
            for name, value in gateway.memory().items():
                if value is not None and (peak.get(name) is None or value > peak[name]):
                    peak[name] = value

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ready.wait(120)  # the attack in full swing (every connection open, say)
    time.sleep(0.5)
    during = wrk(wrk_binary, gateway.run.url + "/run", OTHER, 4, duration, cpu)
    stop.set()
    attacker.join(120)
    sampler_stop.set()
    sampler.join(5)
    time.sleep(5)
    after, servers_after = gateway.memory(), gateway.servers()
    restarts = {name: servers_after[name]["RESTARTS"] - info["RESTARTS"] for name, info in servers_before.items()}
    return {"other_baseline": {k: baseline[k] for k in ("rps", "p50_ms", "p99_ms")},
            "other_during": {k: during.get(k) for k in ("rps", "p50_ms", "p99_ms", "errors")},
            "rss_mb": {name: {"before": before[name], "peak": peak.get(name), "after_5s": after.get(name)}
                       for name in before},
            "restarts": restarts, **found}


def resender(port: int, body: bytes, connections: int, request: bytes | None = None) -> Attack:
    """``connections`` clients sending ``body`` to /run (or ``request`` as it is), each on a new
    connection, again and again."""
    request = request or post(body)

    def attack(stop: threading.Event, ready: threading.Event) -> dict:
        statuses: Counter[int] = Counter()

        def one() -> None:
            while not stop.is_set():
                statuses[status_of(port, request)] += 1

        threads = [threading.Thread(target=one, daemon=True) for _ in range(connections)]
        for thread in threads:
            thread.start()
        ready.set()
        for thread in threads:
            thread.join(120)
        return {"attack_statuses": dict(statuses)}

    return attack


def declared(ports: list[int]) -> Attack:
    def attack(stop: threading.Event, ready: threading.Event) -> dict:
        held = []
        for port in ports:
            for _ in range(250 // len(ports)):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(b"POST /run HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n{" % EIGHT_MB)
                held.append(sock)
        ready.set()
        stop.wait()
        for sock in held:
            sock.close()
        return {"connections": len(held)}

    return attack


def idle(port: int, count: int) -> Attack:
    def attack(stop: threading.Event, ready: threading.Event) -> dict:
        helpers = [subprocess.Popen([sys.executable, "-m", "bench.attacks", "--hold", str(port), str(share)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
                   for share in ([count // 2, count - count // 2] if count > 10_000 else [count])]
        held = sum(int(helper.stdout.readline() or 0) for helper in helpers)
        ready.set()
        served = sum(status_of(port, b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 10) == 200
                     for _ in range(500))
        stop.wait()
        for helper in helpers:
            helper.stdin.close()
            helper.wait(60)
        return {"idle_connections_held": held, "new_clients_served_pct": round(100 * served / 500, 1)}

    return attack


def hold(port: int, count: int) -> None:
    """Helper process: ``count`` connections, each answered once and then idle until stdin closes."""
    raise_nofile_limit()
    socks = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            socks.append(sock)
        except OSError:
            break
    for sock in socks:
        try:
            sock.recv(4096)
        except OSError:
            pass
    print(len(socks), flush=True)
    sys.stdin.read()


def mistakes(gateway: Gateway) -> dict:
    target = gateway.servers()["target"]
    url = gateway.run.url
    count = 2_000_000
    header = json.dumps({"inputs": [{"name": "b", "datatype": "BYTES", "shape": [count],
                                     "parameters": {"binary_data_size": 4 * count}}]}).encode()
    v2 = header + struct.pack("<I", 0) * count
    started = time.monotonic()
    v2_status = requests.post(url + "/v2/models/target/infer", data=v2, timeout=60,
                              headers={"Inference-Header-Content-Length": str(len(header))}).status_code
    v2_seconds = round(time.monotonic() - started, 3)
    return {
        "admin_token_surrogate": requests.post(url + "/shutdown", timeout=10,
                                               data=b'{"SIGNATURE": "SAFE_KILL_SERVER_CMD", "TOKEN": "\\ud800"}'
                                               ).status_code,
        "number_1e400": requests.post(url + "/run", data=b'{"SIGNATURE": "target", "INPUT_VALUE": 1e400}',
                                      timeout=10).status_code,
        "unpaired_surrogate": requests.post(url + "/run", data=b'{"SIGNATURE": "target", "X": "\\ud800"}',
                                            timeout=10).status_code,
        "v2_bytes_2m_empty": {"status": v2_status, "seconds": v2_seconds,
                              "body_mb": round(len(v2) / 2**20, 1), "target_rss_mb": rss_mb([target["PID"]])},
        "direct_run_without_secret": status_of(target["PORT"], post(b'{"SIGNATURE": "target", "INPUT_VALUE": 1}')),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks")
    parser.add_argument("--pin", action="store_true", help="gateway and servers on CPU 1, wrk and attackers on CPU 0")
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", default="2,16")
    parser.add_argument("--idle", type=int, default=20_000)
    parser.add_argument("--only", default="")
    parser.add_argument("--hold", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        hold(*args.hold)
        return 0
    cpu = None
    if args.pin:
        check_pinning_possible()
        os.sched_setaffinity(0, {int(WRK_CPU)})
        cpu = WRK_CPU
    raise_nofile_limit()
    wrk_binary = ensure_wrk()
    gateway = Gateway(args.pin)
    wanted = set(filter(None, args.only.split(",")))
    results: dict[str, dict] = {}
    try:
        port = gateway.port
        attacks: list[tuple[str, Attack]] = []
        for n in (int(c) for c in args.connections.split(",")):
            attacks += [(f"containers_unknown_x{n}", resender(port, containers(b"nope"), n)),
                        (f"containers_target_x{n}", resender(port, containers(b"target"), n)),
                        (f"containers_stream_x{n}", resender(port, containers(b"stream"), n))]
        small_job = post(json.dumps({**OTHER, "SIGNATURE": "target"}).encode(), b"/jobs")
        for n in (int(c) for c in args.connections.split(",")):
            attacks += [(f"jobs_containers_x{n}", resender(port, b"", n, post(containers(b"target"), b"/jobs"))),
                        (f"batch_containers_x{n}", resender(port, b"", n, post(
                            ndjson_containers(b"target"), b"/batches", content_type=b"application/x-ndjson"))),
                        (f"jobs_flood_x{n}", resender(port, b"", n, small_job))]
        small_flow = post(b'{"SIGNATURE": "flow", "INPUT_VALUE": 1}')
        abandoned = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "go"}],
                                "stream": True}).encode()
        bad_region = post(b'{"key": "/no_such_segment", "byte_size": 1}', b"/v2/systemsharedmemory/region/r/register")
        for n in (int(c) for c in args.connections.split(",")):
            attacks += [(f"openai_containers_x{n}", resender(port, b"", n, post(containers(b"chat", b"model"), CHAT))),
                        (f"openai_abandon_x{n}", resender(port, b"", n, post(abandoned, CHAT))),
                        (f"pipeline_containers_x{n}", resender(port, containers(b"flow"), n)),
                        (f"pipeline_flood_x{n}", resender(port, b"", n, small_flow)),
                        (f"shm_register_flood_x{n}", resender(port, b"", n, bad_region))]
        attacks += [("declared", declared([port, gateway.servers()["target"]["PORT"]])),
                    ("idle", idle(port, args.idle))]
        for name, attack in attacks:
            if wanted and not any(name.startswith(w) for w in wanted):
                continue
            results[name] = measured(gateway, wrk_binary, args.duration, cpu, attack)
            print(name, json.dumps(results[name]), file=sys.stderr)
        if not wanted or "mistakes" in wanted or "direct" in wanted:
            results["mistakes"] = mistakes(gateway)
    finally:
        gateway.run.stop()
    print(json.dumps(results, indent=2))
    print(table(results))
    return 0


def table(results: dict[str, dict]) -> str:
    lines = ["| attack | other p50 / p99 ms (baseline) | other p50 / p99 ms (attacked) | restarts | "
             "RSS MB gateway / target / stream: before, peak, 5 s after | attack |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if name == "mistakes":
            continue
        rss = "; ".join(f"{p}: {r['rss_mb'][p]['before']:.0f}, {r['rss_mb'][p]['peak']:.0f}, "
                        f"{r['rss_mb'][p]['after_5s']:.0f}" for p in ("gateway", "target", "stream"))
        extra = {k: v for k, v in r.items() if k not in ("other_baseline", "other_during", "rss_mb", "restarts")}
        lines.append(f"| {name} | {r['other_baseline']['p50_ms']} / {r['other_baseline']['p99_ms']} | "
                     f"{r['other_during']['p50_ms']} / {r['other_during']['p99_ms']} | "
                     f"{sum(r['restarts'].values())} | {rss} | {json.dumps(extra)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
