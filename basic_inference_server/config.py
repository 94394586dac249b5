"""``config_gateway.txt``: read once, validated, frozen.

Any mistake raises :class:`ConfigError` naming the key and what was expected, e.g.
``CONFIG_ENDPOINTS.dummy_model_demo1.NR_WORKERS: expected an integer >= 1, got 0``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .jsonbody import DEFAULT_LIMITS, JsonLimits
from .server.discovery import DiscoveryError, WorkerLocation, find_endpoint_file, locate_worker
from .server.placement import parse_devices, warmup_inputs

logger = logging.getLogger(__name__)

NO_HOST = "NO_HOST"
RESERVED_SIGNATURES = frozenset({"SYSTEM_STATUS"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_OVERRIDE_MARKERS = ("conf", "cfg")

DEFAULT_NR_WORKERS = 5
DEFAULT_HOST = "127.0.0.1"
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_STREAM_TIMEOUT = 600.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_PING_INTERVAL = 10.0


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the expected value."""


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
    stream_idle_timeout: float = DEFAULT_REQUEST_TIMEOUT  # longest wait for a stream's next item
    stream_timeout: float = DEFAULT_STREAM_TIMEOUT  # longest stream
    max_requests: int = 0  # recycle a server after this many answers (0: never), plus up to the jitter
    max_requests_jitter: int = 0
    max_rss_mb: float = 0.0  # recycle a server whose process tree is larger (0: never)
    devices: tuple[str, ...] = ()  # DEVICES: replica i runs on devices[i % len(devices)]
    urls: tuple[tuple[str, int], ...] = ()  # URLS: (host, port) of model servers the gateway did not start
    tls: bool = False  # URLS are https:// (verified against BIS_TLS_CA_FILE or the system's authorities)

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

    def url_of(self, host: str, port: int) -> str:
        """The URL of one of its remote servers (an IPv6 address in brackets)."""
        return f"{'https' if self.tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway configuration."""

    endpoints: tuple[EndpointConfig, ...]
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
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def endpoint(self, name: str) -> EndpointConfig | None:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        return None

    @property
    def model_endpoints(self) -> tuple[EndpointConfig, ...]:
        return tuple(e for e in self.endpoints if not e.is_support)


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
    """Validate a raw config dict and resolve every enabled endpoint's worker class."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"configuration: expected a JSON object, got {type(data).__name__}")
    app_root = Path(app_root)
    raw_endpoints = data.get("CONFIG_ENDPOINTS", {})
    if not isinstance(raw_endpoints, Mapping):
        raise ConfigError(_expected("CONFIG_ENDPOINTS", "an object of endpoint name -> settings", raw_endpoints))
    top_format = _choice(data, "RESPONSE_FORMAT", ("nested", "flat"), "nested", "")
    endpoints = tuple(
        _parse_endpoint(name, settings, app_root, workers_location, workers_suffix)
        for name, settings in raw_endpoints.items()
    )
    if not endpoints:
        logger.warning("CONFIG_ENDPOINTS is empty: the gateway will serve no endpoint")
    first_port = _integer(data, "FIRST_SERVER_PORT", 5003, "", minimum=1, maximum=65535)
    last_port = _integer(data, "LAST_SERVER_PORT", min(first_port + 7, 65535), "", minimum=first_port, maximum=65535)
    default_server = data.get("DEFAULT_SERVER")
    if default_server is not None and not isinstance(default_server, str):
        raise ConfigError(_expected("DEFAULT_SERVER", "an endpoint name", default_server))
    token = data.get("ADMIN_TOKEN")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ConfigError("ADMIN_TOKEN: expected a string of at least 8 characters")
    max_body_mb = _number(data, "MAX_BODY_MB", 8, "", maximum=4096)
    server_name = data.get("SERVER_NAME", "base_ai_app")
    if not isinstance(server_name, str):
        raise ConfigError(_expected("SERVER_NAME", "a string", server_name))
    return GatewayConfig(
        endpoints=endpoints,
        server_name=server_name,
        default_server=default_server,
        no_startup_wait=_boolean(data, "NO_STARTUP_WAIT", False, ""),
        admin_token=token,
        response_format=top_format,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        first_server_port=first_port,
        last_server_port=last_port,
        startup_timeout=_number(data, "STARTUP_TIMEOUT", 300, ""),
        shutdown_grace=_number(data, "SHUTDOWN_GRACE", 10, ""),
        gateway_threads=_integer(data, "GATEWAY_THREADS", 128, "", minimum=8, maximum=1024),
        header_timeout=_number(data, "HEADER_TIMEOUT", 10, ""),
        body_timeout=_number(data, "BODY_TIMEOUT", 30, ""),
        keepalive_timeout=_number(data, "KEEPALIVE_TIMEOUT", 75, ""),
        max_connections=_integer(data, "MAX_CONNECTIONS", 0, "", minimum=0, maximum=1_000_000) or None,
        json_limits=JsonLimits(
            max_values=_integer(data, "MAX_JSON_VALUES", DEFAULT_LIMITS.max_values, "", minimum=1, maximum=10**9),
            max_containers=_integer(data, "MAX_JSON_CONTAINERS", DEFAULT_LIMITS.max_containers, "", minimum=1,
                                    maximum=10**9),
            max_depth=_integer(data, "MAX_JSON_DEPTH", DEFAULT_LIMITS.max_depth, "", minimum=1, maximum=900),
        ),
        protect_notifications=_boolean(data, "PROTECT_NOTIFICATIONS", False, ""),
        raw=MappingProxyType(dict(data)),
    )


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
    name: Any, settings: Any, app_root: Path, workers_location: str, suffix: str
) -> EndpointConfig:
    where = f"CONFIG_ENDPOINTS.{name}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{where}: expected an endpoint name of letters, digits, '_', '-' or '.' (at most 100)"
        )
    if name in RESERVED_SIGNATURES:
        raise ConfigError(f"{where}: the name {name!r} is reserved")
    if not isinstance(settings, Mapping):
        raise ConfigError(_expected(where, "an object of endpoint settings", settings))
    host = settings.get("HOST", DEFAULT_HOST)
    if not isinstance(host, str) or not host:
        raise ConfigError(_expected(f"{where}.HOST", "an IP address, a host name or \"NO_HOST\"", host))
    if "NR_WORKERS" not in settings and host != NO_HOST:
        logger.warning("%s.NR_WORKERS not set: using %d workers", where, DEFAULT_NR_WORKERS)
    server_class = settings.get("SERVER_CLASS", name)
    if not isinstance(server_class, str) or not _NAME_RE.match(server_class):
        raise ConfigError(_expected(f"{where}.SERVER_CLASS", "an endpoint file name", server_class))
    nr_workers = _integer(settings, "NR_WORKERS", DEFAULT_NR_WORKERS, where, minimum=1, maximum=256)
    max_queue = _integer(settings, "MAX_QUEUE", DEFAULT_MAX_QUEUE, where, minimum=1, maximum=100_000)
    request_timeout = _number(settings, "REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT, where)
    description = settings.get("DESCRIPTION", "")
    disabled = _boolean(settings, "DISABLED", False, where)
    _warmup(settings, where)
    urls, tls = _urls(settings, where)
    worker = script = None
    if urls:
        pass  # served elsewhere: the endpoint file lives with its model servers
    elif host == NO_HOST:
        try:
            script = _support_script(where, app_root, workers_location, server_class)
        except ConfigError as exc:
            if not disabled:
                raise
            logger.warning("%s (disabled): %s", where, exc)
    elif not disabled:
        worker = _locate(where, app_root, workers_location, server_class, suffix)
    else:
        # Disabled endpoints may be started later with /start_server: check them now if possible.
        try:
            worker = locate_worker(app_root, workers_location, server_class, suffix)
        except DiscoveryError as exc:
            logger.warning("%s (disabled): %s", where, exc)
    return EndpointConfig(
        name=name,
        server_class=server_class,
        nr_workers=nr_workers,
        host=host,
        description=description if isinstance(description, str) else str(description),
        disabled=disabled,
        request_timeout=request_timeout,
        stream_idle_timeout=_number(settings, "STREAM_IDLE_TIMEOUT", request_timeout, where),
        stream_timeout=_number(settings, "STREAM_TIMEOUT", DEFAULT_STREAM_TIMEOUT, where),
        max_queue=max_queue,
        server_threads=_integer(
            settings, "SERVER_THREADS", min(nr_workers + max_queue + 4, 128), where, minimum=1, maximum=1024
        ),
        ping_interval=_number(settings, "PING_INTERVAL", DEFAULT_PING_INTERVAL, where),
        response_format=_choice(settings, "RESPONSE_FORMAT", ("nested", "flat"), None, where),
        max_batch_size=_integer(settings, "MAX_BATCH_SIZE", 1, where, minimum=1, maximum=4096),
        max_batch_wait_ms=_number(settings, "MAX_BATCH_WAIT_MS", 5, where, maximum=10_000),
        nr_replicas=_integer(settings, "NR_REPLICAS", 1, where, minimum=1, maximum=16),
        max_requests=_integer(settings, "MAX_REQUESTS", 0, where, minimum=0, maximum=1_000_000_000),
        max_requests_jitter=_integer(settings, "MAX_REQUESTS_JITTER", 0, where, minimum=0, maximum=1_000_000_000),
        max_rss_mb=_optional_number(settings, "MAX_RSS_MB", where),
        devices=_devices(settings, where),
        urls=urls,
        tls=tls,
        worker_config=MappingProxyType({str(k).upper(): v for k, v in settings.items()}),
        worker=worker,
        script=script,
    )


def _devices(settings: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "DEVICES" not in settings:
        return ()
    try:
        return parse_devices(settings["DEVICES"])
    except ValueError as exc:
        raise ConfigError(f"{_key(where, 'DEVICES')}: {exc}") from None


def _urls(settings: Mapping[str, Any], where: str) -> tuple[tuple[tuple[str, int], ...], bool]:
    """``URLS``: ``"http://host:port"`` (or ``https://``, all of them the same) or a list of them;
    each host may be a DNS name whose every address is a model server of the endpoint. The
    (host, port) pairs and whether they take TLS."""
    if "URLS" not in settings:
        return (), False
    key = _key(where, "URLS")
    value = settings["URLS"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise ConfigError(_expected(key, 'a URL "http://host:port" or a non-empty list of them', value))
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


def _locate(where: str, app_root: Path, location: str, server_class: str, suffix: str) -> WorkerLocation:
    try:
        return locate_worker(app_root, location, server_class, suffix)
    except DiscoveryError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _support_script(where: str, app_root: Path, location: str, name: str) -> Path:
    try:
        return find_endpoint_file(app_root.joinpath(*location.split(".")), name)
    except DiscoveryError as exc:
        raise ConfigError(f"{where}: support process: {exc}") from None


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _expected(key: str, what: str, got: Any) -> str:
    return f"{key}: expected {what}, got {json.dumps(got) if _jsonable(got) else repr(got)}"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _integer(data: Mapping, key: str, default: int, where: str, minimum: int, maximum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(_expected(_key(where, key), f"an integer >= {minimum} and <= {maximum}", value))
    return value


def _number(data: Mapping, key: str, default: float, where: str, maximum: float = 86_400) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= maximum:
        raise ConfigError(_expected(_key(where, key), f"a number > 0 and <= {maximum:g}", value))
    return float(value)


def _optional_number(data: Mapping, key: str, where: str) -> float:
    """A number > 0, or 0 when the key is absent (the feature is off)."""
    return _number(data, key, 0, where, maximum=1e9) if key in data else 0.0


def _boolean(data: Mapping, key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(_expected(_key(where, key), "true or false", value))
    return value


def _choice(data: Mapping, key: str, choices: tuple[str, ...], default: Any, where: str) -> Any:
    value = data.get(key, default)
    if value is not default and value not in choices:
        raise ConfigError(_expected(_key(where, key), " or ".join(f'"{c}"' for c in choices), value))
    return value
