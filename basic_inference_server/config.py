"""``config_gateway.txt``: read once, validated against the settings schema (:mod:`.settings`), frozen.

Any mistake raises :class:`ConfigError` naming the key and what was expected, e.g.
``CONFIG_ENDPOINTS.dummy_model_demo1.NR_WORKERS: expected an integer >= 1 and <= 256, got 0``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .jsonbody import DEFAULT_LIMITS, JsonLimits
from .pipeconfig import PipelineConfig, is_pipeline, parse_pipelines
from .server.discovery import DiscoveryError, WorkerLocation, expected_location, find_endpoint_file
from .server.placement import parse_devices, warmup_inputs
from .settings import ConfigError, Scope, did_you_mean, expected, key_of, read, setting

logger = logging.getLogger(__name__)

NO_HOST = "NO_HOST"
SYSTEM_STATUS = "SYSTEM_STATUS"  # the SIGNATURE that asks the gateway for its own status
RESERVED_SIGNATURES = frozenset({SYSTEM_STATUS})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_OVERRIDE_MARKERS = ("conf", "cfg")



@dataclass(frozen=True)
class EndpointConfig:
    """One entry of ``CONFIG_ENDPOINTS``."""

    name: str
    server_class: str
    nr_workers: int
    host: str
    description: str
    disabled: bool
    request_timeout: float
    max_queue: int
    server_threads: int
    ping_interval: float
    response_format: str | None
    max_batch_size: int
    max_batch_wait_ms: float
    nr_replicas: int
    worker_config: Mapping[str, Any]  # every key, upper-cased: merged over the module's _CONFIG
    worker: WorkerLocation | None = None  # model servers only
    script: Path | None = None  # support processes only: the script to run
    stream_idle_timeout: float = 60.0  # longest wait for a stream's next item
    stream_timeout: float = 600.0  # longest stream
    max_requests: int = 0  # recycle a server after this many answers (0: never), plus up to the jitter
    max_requests_jitter: int = 0
    max_rss_mb: float = 0.0  # recycle a server whose process tree is larger (0: never)
    devices: tuple[str, ...] = ()  # DEVICES: replica i runs on devices[i % len(devices)]
    urls: tuple[tuple[str, int], ...] = ()  # URLS: (host, port) of model servers the gateway did not start
    tls: bool = False  # URLS are https:// (verified against BIS_TLS_CA_FILE or the system's authorities)
    openai: str | None = None  # OPENAI: chat, completions or embeddings (served on OpenAI's API), else None
    problem: str = ""  # why its endpoint file cannot load (a syntax error, no worker class): it starts FAILED

    @property
    def is_support(self) -> bool:
        return self.host == NO_HOST

    def capacity(self, nr_workers: int | None = None) -> int:
        """Requests one of its model servers can hold: a batch per worker (one request without
        batching) plus its queue (``nr_workers``: a size changed by /update_workers)."""
        return (nr_workers or self.nr_workers) * self.max_batch_size + self.max_queue

    @property
    def is_remote(self) -> bool:
        """Served by model servers elsewhere (``URLS``), not by children of this gateway."""
        return bool(self.urls)

    def code_hash(self) -> str:
        """The hash of its endpoint file as it is on disk ("" when it has none or it cannot be
        read): a reloaded configuration compares it with the one its servers started from."""
        path = self.worker.module_file if self.worker is not None else self.script
        if path is None:
            return ""
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return ""

    def url_of(self, host: str, port: int) -> str:
        """The URL of one of its remote servers (an IPv6 address in brackets)."""
        return f"{'https' if self.tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway configuration."""

    endpoints: tuple[EndpointConfig, ...]
    pipelines: tuple[PipelineConfig, ...] = ()  # entries with PIPELINE: steps of endpoints, no process of their own
    server_name: str = "base_ai_app"
    default_server: str | None = None
    no_startup_wait: bool = False
    admin_token: str | None = None
    response_format: str = "nested"
    max_body_bytes: int = 8 * 1024 * 1024
    first_server_port: int = 5003
    last_server_port: int = 5010
    startup_timeout: float = 300.0
    shutdown_grace: float = 10.0
    gateway_threads: int = 128
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int | None = None  # None: as many as the open-file limit allows
    json_limits: JsonLimits = DEFAULT_LIMITS  # MAX_JSON_VALUES, MAX_JSON_CONTAINERS, MAX_JSON_DEPTH
    protect_notifications: bool = False  # PROTECT_NOTIFICATIONS: /notifications takes the admin token
    strict_startup: bool = False  # STRICT_STARTUP: exit 2 when an endpoint fails to start
    job_ttl: float = 86_400.0  # JOB_TTL: seconds a finished job is kept
    job_max_attempts: int = 3  # JOB_MAX_ATTEMPTS
    job_store_max_bytes: int = 1024 * 1024 * 1024  # JOB_STORE_MAX_MB
    shm_threshold_bytes: int = 65536  # SHM_THRESHOLD_KB: pipeline values' buffers from this size in shared memory
    allow_client_shm: bool = False  # ALLOW_CLIENT_SHM: the V2 system shared-memory extension for local clients
    job_store: str = "sqlite"  # JOB_STORE: "sqlite" (embedded) or a Redis address
    job_lease_s: float = 30.0  # JOB_LEASE_S: a running job's lease on a shared (Redis) store
    webhook_retry_s: float = 86_400.0  # WEBHOOK_RETRY_S
    webhook_allowed_hosts: tuple[str, ...] | None = None  # WEBHOOK_ALLOWED_HOSTS (None: every host)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def endpoint(self, name: str) -> EndpointConfig | None:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        return None

    @property
    def model_endpoints(self) -> tuple[EndpointConfig, ...]:
        return tuple(e for e in self.endpoints if not e.is_support)

    def file_problems(self) -> list[str]:
        """Why enabled endpoints' files cannot load, one line each (empty when they all can)."""
        return [f"CONFIG_ENDPOINTS.{e.name}: {e.problem}" for e in self.endpoints if e.problem and not e.disabled]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (``.txt`` or ``.json``) into a dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], data_folder: str | Path) -> dict[str, Any]:
    """Replace top-level keys with those of ``<data_folder>/*conf*.json|txt`` (sorted by name).

    This is how a Docker volume reconfigures the app without rebuilding the image.
    """
    folder = Path(data_folder)
    if not folder.is_dir():
        return data
    merged = dict(data)
    for path in sorted(folder.iterdir()):
        name = path.name.lower()
        if not path.is_file() or not name.endswith((".json", ".txt")):
            continue
        if not any(marker in name for marker in _OVERRIDE_MARKERS):
            continue
        for key, value in read_config_file(path).items():
            logger.warning("Config override from %s: key %s replaced", path, key)
            merged[key] = value
    return merged


def parse_config(
    data: Mapping[str, Any],
    app_root: str | Path = ".",
    workers_location: str = "endpoints",
    workers_suffix: str = "Worker",
) -> GatewayConfig:
    """Validate a raw config dict (every key as :mod:`.settings` declares it) and resolve every
    enabled endpoint's worker class."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"configuration: expected a JSON object, got {type(data).__name__}")
    app_root = Path(app_root)
    for key, near in did_you_mean(data, Scope.TOP).items():
        logger.warning("%s is no setting of the configuration's top level: did you mean %s?", key, near)
    raw_endpoints = data.get("CONFIG_ENDPOINTS", {})
    if not isinstance(raw_endpoints, Mapping):
        raise ConfigError(expected("CONFIG_ENDPOINTS", "an object of endpoint name -> settings", raw_endpoints))
    top_format = read(data, "RESPONSE_FORMAT")
    endpoints = tuple(
        _parse_endpoint(name, entry, app_root, workers_location, workers_suffix)
        for name, entry in raw_endpoints.items() if not is_pipeline(entry)
    )
    pipelines = parse_pipelines(raw_endpoints, {e.name: e for e in endpoints})
    if not endpoints:
        logger.warning("CONFIG_ENDPOINTS is empty: the gateway will serve no endpoint")
    first_port = read(data, "FIRST_SERVER_PORT")
    last_port = read(data, "LAST_SERVER_PORT", default=min(first_port + 7, 65535))
    if last_port < first_port:
        raise ConfigError(expected("LAST_SERVER_PORT", f"a port >= FIRST_SERVER_PORT ({first_port})", last_port))
    default_server = data.get("DEFAULT_SERVER")
    if default_server is not None and not isinstance(default_server, str):
        raise ConfigError(expected("DEFAULT_SERVER", "an endpoint name", default_server))
    token = data.get("ADMIN_TOKEN")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ConfigError("ADMIN_TOKEN: expected a string of at least 8 characters")
    return GatewayConfig(
        endpoints=endpoints,
        pipelines=pipelines,
        server_name=read(data, "SERVER_NAME"),
        default_server=default_server,
        no_startup_wait=read(data, "NO_STARTUP_WAIT"),
        admin_token=token,
        response_format=top_format,
        max_body_bytes=int(read(data, "MAX_BODY_MB") * 1024 * 1024),
        first_server_port=first_port,
        last_server_port=last_port,
        startup_timeout=read(data, "STARTUP_TIMEOUT"),
        shutdown_grace=read(data, "SHUTDOWN_GRACE"),
        gateway_threads=read(data, "GATEWAY_THREADS"),
        header_timeout=read(data, "HEADER_TIMEOUT"),
        body_timeout=read(data, "BODY_TIMEOUT"),
        keepalive_timeout=read(data, "KEEPALIVE_TIMEOUT"),
        max_connections=read(data, "MAX_CONNECTIONS") or None,
        json_limits=JsonLimits(read(data, "MAX_JSON_VALUES"), read(data, "MAX_JSON_CONTAINERS"),
                               read(data, "MAX_JSON_DEPTH")),
        protect_notifications=read(data, "PROTECT_NOTIFICATIONS"),
        strict_startup=read(data, "STRICT_STARTUP"),
        job_ttl=read(data, "JOB_TTL"),
        job_max_attempts=read(data, "JOB_MAX_ATTEMPTS"),
        job_store_max_bytes=int(read(data, "JOB_STORE_MAX_MB") * 1024 * 1024),
        shm_threshold_bytes=int(read(data, "SHM_THRESHOLD_KB") * 1024),
        allow_client_shm=read(data, "ALLOW_CLIENT_SHM"),
        job_store=_job_store(os.environ.get(JOB_STORE_ENV) or read(data, "JOB_STORE")),
        job_lease_s=read(data, "JOB_LEASE_S"),
        webhook_retry_s=read(data, "WEBHOOK_RETRY_S"),
        webhook_allowed_hosts=_allowed_hosts(data.get("WEBHOOK_ALLOWED_HOSTS")),
        raw=MappingProxyType(dict(data)),
    )


JOB_STORE_ENV = "BIS_JOB_STORE"  # the deployment's Redis, whatever the configuration file says


def _job_store(value: Any) -> str:
    """JOB_STORE (or BIS_JOB_STORE): "sqlite", or a Redis address with no password in it (that
    comes from the environment, BIS_JOB_STORE_PASSWORD: secrets are never in the configuration)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(expected("JOB_STORE", '"sqlite" or a Redis address (redis://host:port/db)', value))
    value = value.strip()
    if value == "sqlite":
        return value
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.hostname or parsed.path):
        raise ConfigError(expected("JOB_STORE", '"sqlite" or a Redis address (redis://host:port/db)', value))
    if parsed.password:
        raise ConfigError("JOB_STORE: the address holds a password; give it in the environment as "
                          "BIS_JOB_STORE_PASSWORD instead (secrets are never in the configuration)")
    return value


def _allowed_hosts(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(host, str) and host.strip() for host in value):
        raise ConfigError(expected("WEBHOOK_ALLOWED_HOSTS", "a list of host names", value))
    return tuple(host.strip().lower() for host in value)


def load_config(
    config_file: str | Path,
    data_folder: str | Path | None = None,
    app_root: str | Path = ".",
    workers_location: str = "endpoints",
    workers_suffix: str = "Worker",
) -> GatewayConfig:
    """Read ``config_file``, apply the ``_data`` overrides, validate."""
    data = read_config_file(config_file)
    if data_folder is not None:
        data = apply_overrides(data, data_folder)
    return parse_config(data, app_root, workers_location, workers_suffix)


def _parse_endpoint(
    name: Any, entry: Any, app_root: Path, workers_location: str, suffix: str
) -> EndpointConfig:
    where = f"CONFIG_ENDPOINTS.{name}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{where}: expected an endpoint name of letters, digits, '_', '-' or '.' (at most 100)"
        )
    if name in RESERVED_SIGNATURES:
        raise ConfigError(f"{where}: the name {name!r} is reserved")
    if not isinstance(entry, Mapping):
        raise ConfigError(expected(where, "an object of endpoint settings", entry))
    for key, near in did_you_mean(entry, Scope.ENDPOINT).items():
        logger.warning("%s.%s is no framework setting (it goes to the endpoint's own configuration): did you mean "
                       "%s?", where, key, near)

    def get(key: str, *default: Any) -> Any:  # the setting's own default unless one is given
        return read(entry, key, Scope.ENDPOINT, where, *default)

    host = get("HOST")
    if not isinstance(host, str) or not host:
        raise ConfigError(expected(f"{where}.HOST", "an IP address, a host name or \"NO_HOST\"", host))
    if "NR_WORKERS" not in entry and host != NO_HOST:
        logger.warning("%s.NR_WORKERS not set: using %d workers", where, setting("NR_WORKERS", Scope.ENDPOINT).default)
    server_class = get("SERVER_CLASS", name)
    if not isinstance(server_class, str) or not _NAME_RE.match(server_class):
        raise ConfigError(expected(f"{where}.SERVER_CLASS", "an endpoint file name", server_class))
    nr_workers, max_queue, request_timeout = get("NR_WORKERS"), get("MAX_QUEUE"), get("REQUEST_TIMEOUT")
    description = get("DESCRIPTION")
    disabled = get("DISABLED")
    _warmup(entry, where)
    urls, tls = _urls(entry, where)
    worker = script = None
    problem = ""
    if urls:
        pass  # served elsewhere: the endpoint file lives with its model servers
    elif host == NO_HOST:
        try:
            script = _support_script(where, app_root, workers_location, server_class)
        except ConfigError as exc:
            if not disabled:
                raise
            logger.warning("%s (disabled): %s", where, exc)
    else:
        try:
            worker, problem = expected_location(app_root, workers_location, server_class, suffix)
        except DiscoveryError as exc:  # no endpoint file at all: a mistake in the configuration
            if not disabled:
                raise ConfigError(f"{where}: {exc}") from None
            logger.warning("%s (disabled): %s", where, exc)
        if problem and disabled:  # it may be started later with /start_server: said now
            logger.warning("%s (disabled): %s", where, problem)
    return EndpointConfig(
        name=name,
        server_class=server_class,
        nr_workers=nr_workers,
        host=host,
        description=description if isinstance(description, str) else str(description),
        disabled=disabled,
        request_timeout=request_timeout,
        stream_idle_timeout=get("STREAM_IDLE_TIMEOUT", request_timeout),
        stream_timeout=get("STREAM_TIMEOUT"),
        max_queue=max_queue,
        server_threads=get("SERVER_THREADS", min(nr_workers + max_queue + 4, 128)),
        ping_interval=get("PING_INTERVAL"),
        response_format=get("RESPONSE_FORMAT"),
        max_batch_size=get("MAX_BATCH_SIZE"),
        max_batch_wait_ms=get("MAX_BATCH_WAIT_MS"),
        nr_replicas=get("NR_REPLICAS"),
        max_requests=get("MAX_REQUESTS"),
        max_requests_jitter=get("MAX_REQUESTS_JITTER"),
        max_rss_mb=get("MAX_RSS_MB", 0.0),
        devices=_devices(entry, where),
        openai=get("OPENAI"),
        urls=urls,
        tls=tls,
        worker_config=MappingProxyType({str(k).upper(): v for k, v in entry.items()}),
        worker=worker,
        script=script,
        problem=problem,
    )


def _devices(settings: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "DEVICES" not in settings:
        return ()
    try:
        return parse_devices(settings["DEVICES"])
    except ValueError as exc:
        raise ConfigError(f"{key_of(where, 'DEVICES')}: {exc}") from None


def _urls(settings: Mapping[str, Any], where: str) -> tuple[tuple[tuple[str, int], ...], bool]:
    """``URLS``: ``"http://host:port"`` (or ``https://``, all of them the same) or a list of them;
    each host may be a DNS name whose every address is a model server of the endpoint. The
    (host, port) pairs and whether they take TLS."""
    if "URLS" not in settings:
        return (), False
    key = key_of(where, "URLS")
    value = settings["URLS"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise ConfigError(expected(key, 'a URL "http://host:port" or a non-empty list of them', value))
    if settings.get("HOST") == NO_HOST:
        raise ConfigError(f"{key}: a support process (HOST \"NO_HOST\") has no URLS")
    found: list[tuple[str, int]] = []
    schemes = set()
    for item in items:
        try:
            parts = urllib.parse.urlsplit(item)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ConfigError(f"{key}: {item!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query:
            raise ConfigError(f"{key}: expected \"http://host:port\" (a private network) or "
                              f"\"https://host:port\" (TLS), got {item!r}")
        schemes.add(parts.scheme)
        if (parts.hostname, port) not in found:
            found.append((parts.hostname, port))
    if len(schemes) > 1:
        raise ConfigError(f"{key}: mixes http:// and https://; the servers of one endpoint take the same")
    return tuple(found), schemes == {"https"}


def _warmup(settings: Mapping[str, Any], where: str) -> None:
    try:
        warmup_inputs(settings)
    except ValueError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def _support_script(where: str, app_root: Path, location: str, name: str) -> Path:
    try:
        return find_endpoint_file(app_root.joinpath(*location.split(".")), name)
    except DiscoveryError as exc:
        raise ConfigError(f"{where}: support process: {exc}") from None
