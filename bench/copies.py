"""Bytes copied in user space per request of 1 MB (and per answer of 1 MB), process by process.

    .venv/bin/python -m bench.copies [--mb 1] [--requests 20] [--source DIR]
    .venv/bin/python -m bench.copies --pipeline [--requests 20]

Builds ``bench/native/memcount.c`` (a shared library counting every ``memcpy``/``memmove`` of 4 KB
or more, loaded with ``LD_PRELOAD``; needs a C compiler), starts a gateway with
``bench/endpoints/bench_bytes.py`` under it, and sends ``--requests`` requests of each kind:

- a request whose body is MB of JSON text, answered with a few bytes;
- a small request answered with MB of JSON text.

The counters are read before and after each kind, so start-up is not counted. The model server's
figure includes what the hooks' JSON costs (decoding the request's string, encoding the answer's),
which no transport change removes. The kernel's copies (a socket's send and receive) are not
counted. ``--source`` runs the gateway from another checkout of the package (``git worktree add``
one at an older commit to compare). Prints a Markdown table and writes it to
``bench/results/copies_<stamp>.md``.

``--pipeline``: a 1920 x 1080 x 3 uint8 frame (6 MB) passed from one pipeline step to the next
(``bench/endpoints/bench_pipe.py``: ``frame`` returns the same array each time, ``shape`` answers its
shape without reading it), through shared memory (SHM_THRESHOLD_KB 64), then with it off (the
frame on the channel, through the gateway). Besides the user-space copies it counts, per process,
the bytes its system calls read and wrote (``rchar`` + ``wchar`` of ``/proc/<pid>/io``): the kernel's
copies, which ``memcpy`` counting cannot see.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import GatewayRun
from bench.report import save_table

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH / "native" / "memcount.c"


def build(folder: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("bench.copies needs a C compiler (cc or gcc) to build its memcpy counter")
    library = folder / "memcount.so"
    subprocess.run([compiler, "-O2", "-fno-builtin", "-fno-tree-loop-distribute-patterns", "-shared", "-fPIC",
                    "-o", str(library), str(SOURCE), "-ldl"], check=True)
    return library


def counters(folder: Path) -> dict[int, int]:
    """Bytes copied so far, by process id."""
    return {int(path.stem): struct.unpack("QQ", path.read_bytes()[:16])[0]
            for path in folder.glob("*.count") if path.stat().st_size >= 16}


def measure(gateway: GatewayRun, folder: Path, body: dict, count: int) -> dict[int, float]:
    """MB copied per request, by process id, over ``count`` requests of ``body``."""
    with requests.Session() as session:
        session.post(gateway.url + "/run", json=body, timeout=60).raise_for_status()  # warm
        time.sleep(0.5)
        before = counters(folder)
        for _ in range(count):
            session.post(gateway.url + "/run", json=body, timeout=60).raise_for_status()
        time.sleep(0.5)  # answers written, counters settled
        after = counters(folder)
    return {pid: (after[pid] - before.get(pid, 0)) / count / 1048576 for pid in after}


def syscall_bytes(pids: dict[int, str]) -> dict[str, int]:
    """Bytes read and written by system calls so far (rchar + wchar), by role."""
    out = {}
    for pid, role in pids.items():
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        out[role] = int(fields["rchar"]) + int(fields["wchar"])
    return out


def pipeline(args: argparse.Namespace, folder: Path, env: dict[str, str]) -> list[str]:
    """The frame between two steps, with shared memory and without: MB copied per request."""
    rows = ["| a 6 MB frame between two steps | gateway | step that made it | step that took it |",
            "|---|---|---|---|"]
    for label, threshold in (("shared memory (SHM_THRESHOLD_KB 64)", 64),
                             ("on the channel (shared memory off)", 10**7)):
        step = {"SERVER_CLASS": "bench_pipe", "NR_WORKERS": 1}
        config = {"SHM_THRESHOLD_KB": threshold, "CONFIG_ENDPOINTS": {
            "frame": {**step, "OP": "frame"}, "shape": {**step, "OP": "shape"},
            "copy_flow": {"PIPELINE": ["frame", "shape"]}}}
        gateway = GatewayRun(sorted((BENCH / "endpoints").glob("*.py")), config, 2, 23600, env=env)
        try:
            if gateway.wait_ready() is None:
                sys.exit("the gateway did not become ready:\n" + gateway.output())
            servers = requests.get(gateway.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"]
            pids = {gateway.proc.pid: "gateway", servers["frame"]["PID"]: "made", servers["shape"]["PID"]: "took"}
            body = {"SIGNATURE": "copy_flow"}
            with requests.Session() as session:
                session.post(gateway.url + "/run", json=body, timeout=60).raise_for_status()
                time.sleep(0.5)
                before, calls = counters(folder), syscall_bytes(pids)
                for _ in range(args.requests):
                    session.post(gateway.url + "/run", json=body, timeout=60).raise_for_status()
                time.sleep(0.5)
                after, called = counters(folder), syscall_bytes(pids)
            mb = {role: ((after.get(pid, 0) - before.get(pid, 0)) / args.requests / 1048576,
                         (called[role] - calls[role]) / args.requests / 1048576) for pid, role in pids.items()}
            rows.append(f"| {label}: user space / system calls | " + " | ".join(
                f"{mb[role][0]:.2f} / {mb[role][1]:.2f}" for role in ("gateway", "made", "took")) + " |")
            print(rows[-1], file=sys.stderr, flush=True)
        finally:
            gateway.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--source", type=Path, help="the checkout whose package the gateway runs")
    parser.add_argument("--pipeline", action="store_true", help="a 6 MB frame between two pipeline steps")
    args = parser.parse_args()
    size = int(args.mb * 1048576)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {"LD_PRELOAD": str(build(folder)), "MEMCOUNT_DIR": str(folder), "BIS_LOG_LEVEL": "WARNING"}
        if args.source is not None:
            env["PYTHONPATH"] = str(args.source.resolve())
        if args.pipeline:
            save_table("copies-pipeline", "\n".join(pipeline(args, folder, env)), args)
            return 0
        gateway = GatewayRun([BENCH / "endpoints" / "bench_bytes.py"],
                             {"CONFIG_ENDPOINTS": {"bytes": {"SERVER_CLASS": "bench_bytes", "NR_WORKERS": 1,
                                                             "MAX_BODY_MB": 4 * args.mb + 1}}},
                             1, 23500, env=env)
        try:
            if gateway.wait_ready() is None:
                sys.exit("the gateway did not become ready:\n" + gateway.output())
            servers = requests.get(gateway.url + "/list_servers", timeout=5).json()["AVAIL_SERVERS"]
            roles = {gateway.proc.pid: "gateway", servers["bytes"]["PID"]: "model server"}
            kinds = {
                f"request of {args.mb:g} MB": {"SIGNATURE": "bytes", "TEXT": "a" * size},
                f"answer of {args.mb:g} MB": {"SIGNATURE": "bytes", "ANSWER_KB": size // 1024},
            }
            rows = [f"| {args.source or 'this checkout'} | gateway MB copied | model server MB copied |",
                    "|---|---|---|"]
            for kind, body in kinds.items():
                copied = measure(gateway, folder, body, args.requests)
                by_role = {role: copied.get(pid, 0.0) for pid, role in roles.items()}
                rows.append(f"| {kind} | {by_role['gateway']:.2f} | {by_role['model server']:.2f} |")
                print(rows[-1], file=sys.stderr, flush=True)
        finally:
            gateway.stop()
    save_table("copies", "\n".join(rows), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
