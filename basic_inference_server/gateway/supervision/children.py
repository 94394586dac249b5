"""How the gateway starts its child processes: model servers and support processes.

A model server gets its configuration (secrets included) on its stdin pipe, never in argv; the
pipe stays open, and end-of-file tells the server the gateway is gone. A support process is a
user script run as the original ran it: ``python endpoints/<name>.py --config_endpoint '<json>'``;
on Linux it is asked to receive SIGTERM when the gateway dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ...config import EndpointConfig, GatewayConfig
from ...server.placement import VISIBLE, device_of, visible_devices
from ...server.spec import ServerSpec

PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])
SUPPORT_PATH = "/support_update_status"
_PR_SET_PDEATHSIG = 1


# The gateway's secrets: a child is given what it needs on its stdin, never in its environment
# (which /proc/<pid>/environ shows, and which user code and the libraries it loads can read).
SECRET_VARIABLES = ("BIS_ADMIN_TOKEN", "BIS_ENDPOINT_TOKEN", "BIS_ENDPOINT_TOKEN_FILE")


def child_env(app_root: Path) -> dict[str, str]:
    """The gateway's environment without its secrets, with the app and this package importable."""
    env = {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(app_root), PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def spawn_model_server(spec: ServerSpec, app_root: Path) -> subprocess.Popen:
    env = child_env(app_root)
    visible = visible_devices(spec.device, env.get(VISIBLE))
    if visible is not None:  # DEVICES: this replica sees its own GPU only (or none, on "cpu")
        env[VISIBLE] = visible
    proc = subprocess.Popen(
        [sys.executable, "-m", "basic_inference_server.server"],
        stdin=subprocess.PIPE,
        cwd=str(app_root),
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(spec.to_json().encode("utf-8") + b"\n")
    proc.stdin.flush()
    return proc


def model_server_spec(
    endpoint: EndpointConfig, name: str, port: int, socket_path: str, config: GatewayConfig, *, nr_workers: int,
    app_root: Path, cache_folder: Path, error_file: Path, host_id: str, admin_token: str | None,
    workers_location: str, workers_suffix: str, execution_path: str, replica: int = 0,
) -> ServerSpec:
    return ServerSpec(
        name=name,
        server_class=endpoint.server_class,
        host=endpoint.host,
        port=port,
        socket_path=socket_path,
        nr_workers=nr_workers,
        max_queue=endpoint.max_queue,
        server_threads=endpoint.server_threads,
        request_timeout=endpoint.request_timeout,
        stream_idle_timeout=endpoint.stream_idle_timeout,
        stream_timeout=endpoint.stream_timeout,
        max_batch_size=endpoint.max_batch_size,
        max_batch_wait_ms=endpoint.max_batch_wait_ms,
        endpoint_config=dict(endpoint.worker_config),
        app_root=str(app_root),
        workers_location=workers_location,
        workers_suffix=workers_suffix,
        execution_path=execution_path,
        cache_folder=str(cache_folder),
        host_id=host_id,
        admin_token=admin_token,
        max_body_bytes=config.max_body_bytes,
        max_json_values=config.json_limits.max_values,
        max_json_containers=config.json_limits.max_containers,
        max_json_depth=config.json_limits.max_depth,
        shm_threshold_bytes=config.shm_threshold_bytes,
        allow_client_shm=config.allow_client_shm,
        shutdown_grace=config.shutdown_grace,
        error_file=str(error_file),
        device=device_of(endpoint.devices, replica),
    )


def write_secret(folder: Path, port: int) -> tuple[str, Path]:
    """A new secret for the model server on ``port``, in ``<folder>/<port>.secret`` (mode 0600, in
    the folder of the sockets, 0700): the server reads it at start and takes every route but
    /health only with it; whoever runs as this user may read it too, to call the server directly."""
    secret = secrets.token_urlsafe(32)
    path = folder / f"{port}.secret"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret)
    return secret, path


def socket_folder(cache_folder: Path) -> tuple[Path, bool]:
    """A folder private to this user for the model servers' Unix sockets, and whether it is a
    temporary one (to remove at the end). ``<cache>/_run/sockets`` when its socket paths fit
    the 108 bytes a Unix socket address holds, else a new folder in the temp directory."""
    folder = cache_folder / "_run" / "sockets"
    if len(str(folder)) + len("/65535.sock") < 100:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        return folder, False
    return Path(tempfile.mkdtemp(prefix="bis-")), True


def support_config(endpoint: EndpointConfig, gateway_host: str, gateway_port: int) -> dict[str, Any]:
    """The ``--config_endpoint`` JSON of the original contract."""
    data = dict(endpoint.worker_config)
    data.update(
        SERVER=gateway_host,
        SERVER_PORT=gateway_port,
        SERVER_PATH=SUPPORT_PATH,
        SUPPORT_NAME=endpoint.name,
        PING_INTERVAL=endpoint.ping_interval,
    )
    return data


def spawn_support(
    script: Path, endpoint: EndpointConfig, gateway_host: str, gateway_port: int, app_root: Path
) -> subprocess.Popen:
    """Run a support script. Only call this from the gateway's main thread: the death signal is
    tied to the thread that forks."""
    config = json.dumps(support_config(endpoint, gateway_host, gateway_port))
    return subprocess.Popen(
        [sys.executable, str(script), "--config_endpoint", config],
        stdin=subprocess.DEVNULL,
        cwd=str(app_root),
        env=child_env(app_root),
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
