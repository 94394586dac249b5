"""Other serving systems measured beside the gateway: LitServe, Mosec and Aqueduct (and BentoML's task
API beside the durable jobs, bench/jobs.py).

Each peer is installed on demand in its own venv (``bench/.venv-<peer>``) and serves the bench
models of ``bench/peer_models.py`` with ``bench/<peer>_app.py MODEL PORT``, one worker process per
model, on loopback. A peer is ready when a real request (the model's bench body) answers 200 with
JSON (one document, or JSON lines for a streamed answer); one that does not within the time limit is
stopped and its output shown. LitServe also serves the streaming model (``stream=True``); Mosec and
Aqueduct do not here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.common import stop_group
from bench.load import BENCH, pinned, rss_mb, tree

PEER_MODELS = ("dummy", "numpy", "batch8", "large", "onnx", "onnx_b8")  # the bench models every peer serves
ONNX_RUNTIME = "onnxruntime==1.31.1"  # the version the gateway's venv has (examples/onnx_classifier)


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]  # pip requirements, the first one the peer itself, pinned
    route: str  # where the app answers POST
    models: tuple[str, ...] = PEER_MODELS  # the bench models it serves

    @property
    def venv(self) -> Path:
        return BENCH / f".venv-{self.name}"

    @property
    def distribution(self) -> tuple[str, str]:
        name, _, version = self.requirements[0].partition("==")
        return name.split("[")[0], version


PEERS: dict[str, Peer] = {
    "litserve": Peer("litserve", ("litserve==0.2.19", "numpy", ONNX_RUNTIME), "/predict", (*PEER_MODELS, "stream")),
    "mosec": Peer("mosec", ("mosec==0.9.8", "numpy", ONNX_RUNTIME), "/inference"),
    "aqueduct": Peer("aqueduct", ("aqueduct[aiohttp]==1.15.0", "numpy", ONNX_RUNTIME), "/predict"),
    # Durable jobs beside BentoML's task API (bench/jobs.py --only peer): the dummy model only.
    "bentoml": Peer("bentoml", ("bentoml==1.4.40",), "/predict/submit", ("dummy",)),
}


def ensure_peer(peer: Peer) -> Path:
    """The peer's venv python, after creating the venv and installing the pinned version if needed."""
    python = peer.venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], check=True)
    pins = [(r.split("==")[0].split("[")[0], r.partition("==")[2]) for r in peer.requirements]
    check = (f"import importlib.metadata as m, sys; pins = {pins!r}; "
             "sys.exit(any(v and m.version(n) != v for n, v in pins) or not all(m.version(n) for n, _ in pins))")
    if subprocess.run([str(python), "-c", check], capture_output=True).returncode != 0:
        print(f"Installing {' '.join(peer.requirements)} into {peer.venv} ...", file=sys.stderr, flush=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *peer.requirements],
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"could not install {peer.name}:\n{done.stdout}\n{done.stderr}")
    return python


class PeerStartError(RuntimeError):
    pass


def _check_json(text: str) -> None:
    """Raise ValueError unless ``text`` is one JSON document or JSON lines (a streamed answer)."""
    try:
        json.loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise
        for line in lines:
            json.loads(line)


class PeerProcess:
    """One peer app serving one bench model, in its own process group (stopped with killpg)."""

    def __init__(self, peer: Peer, python: Path, model: str, port: int, cpu: str | None = None,
                 route: str | None = None):
        """``route``: where this model answers, when not at the peer's usual route."""
        self.peer, self.model = peer, model
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + (route or peer.route)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"bench-{peer.name}-")  # its cwd, and its output
        self._log_path = Path(self._tmp.name) / "output.txt"
        self._log = open(self._log_path, "wb")
        self.proc = subprocess.Popen(
            pinned([str(python), str(BENCH / f"{peer.name}_app.py"), model, str(port)], cpu),
            cwd=self._tmp.name, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, body: dict, timeout: float = 120) -> float:
        """Seconds until ``body`` answered 200 with JSON; raises PeerStartError (after stopping the
        peer) when the process exits or ``timeout`` passes first."""
        started = time.monotonic()
        last = "no answer"
        with requests.Session() as session:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    last = f"exited with code {self.proc.returncode}"
                    break
                try:
                    reply = session.post(self.url, json=body, timeout=5)
                    if reply.status_code == 200:
                        _check_json(reply.text)
                        return time.monotonic() - started
                    last = f"HTTP {reply.status_code}: {reply.text[:200]}"
                except (requests.RequestException, ValueError) as exc:
                    last = type(exc).__name__
                time.sleep(0.2)
        output = self.output()
        self.stop()
        raise PeerStartError(f"{self.peer.name} for {self.model} did not start ({last}); its output:\n{output}")

    def drain(self, body: dict, timeout: float = 30) -> None:
        """Wait until what the last point left queued has been served: one more request, queued
        behind it, comes back."""
        try:
            requests.post(self.url, json=body, timeout=timeout)
        except requests.RequestException:
            pass

    def batch_counts(self) -> tuple[float, int] | None:
        """(sum, count) of the batch sizes the peer formed, where it publishes them (Mosec's
        Prometheus ``mosec_service_batch_size`` histogram), else None."""
        if self.peer.name != "mosec":
            return None
        try:
            text = requests.get(self.base + "/metrics", timeout=5).text
        except requests.RequestException:
            return None
        total, count = 0.0, 0
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("mosec_service_batch_size_sum"):
                total += float(value)
            elif name.startswith("mosec_service_batch_size_count"):
                count += int(float(value))
        return total, count

    def pause(self) -> None:
        """Freeze the whole peer (SIGSTOP to its group) while others are measured: an idle peer's
        polling loops would take CPU from them (LitServe's batching loop: about 20 % of a core)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in tree([self.proc.pid])]

    def rss_mb(self) -> float | None:
        return rss_mb([self.proc.pid], recursive=True)

    def output(self, tail: int = 6000) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self._log.closed:
            return
        self.resume()  # a stopped process would hold SIGTERM pending
        stop_group(self.proc, grace=20)
        self._log.close()
        self._tmp.cleanup()


def start_peers(names: list[str], models: list[str], port: int, bodies: dict[str, dict],
                cpu: str | None) -> tuple[dict[tuple[str, str], PeerProcess], dict[str, str]]:
    """Start every peer for every model of ``models`` it serves, all at once, on ports from
    ``port``; wait for each, then pause it. Returns the ready ones by (peer, model) and the
    failures' messages. Installs every peer before starting any; on an unexpected error, stops
    all it started."""
    pythons = {name: ensure_peer(PEERS[name]) for name in names}
    started: dict[tuple[str, str], PeerProcess] = {}
    ready, failures = {}, {}
    try:
        for name in names:
            for model in (m for m in models if m in PEERS[name].models):
                started[name, model] = PeerProcess(PEERS[name], pythons[name], model, port + len(started), cpu)
        for key, process in started.items():
            try:
                seconds = process.wait_ready(bodies[key[1]])
                print(f"{key[0]} {key[1]} ready after {seconds:.1f} s", file=sys.stderr, flush=True)
                ready[key] = process
            except PeerStartError as exc:
                print(f"WARNING: {exc}", file=sys.stderr, flush=True)
                failures[f"{key[0]}/{key[1]}"] = str(exc).splitlines()[0]
    except BaseException:
        for process in started.values():
            process.stop()
        raise
    for process in ready.values():
        process.pause()
    return ready, failures
