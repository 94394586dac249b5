"""Every setting the project reads, declared once: its key, where it goes (the top level of
``config_gateway.txt``, an endpoint's entry, or the environment), its type, bounds, default and
documentation. The configuration parser (:mod:`.config`) validates with it, the configuration
reference of the docs is generated from it (:func:`reference`), and a key that is no setting but
close to one is warned about with it (:func:`did_you_mean`): the three cannot drift apart.

Keys of an endpoint's entry that are no setting are the endpoint's own configuration (its
``_CONFIG``, upper-cased), as in the original, so they are never errors; a near miss of a setting
(``MAX_BATCH_SIZ``) is almost always a typo, and is said at start and on reload.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .openaishape import KINDS


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the expected value."""


class Scope(Enum):
    TOP = "top level of config_gateway.txt"
    ENDPOINT = "an endpoint's entry"
    ENV = "environment variable"


class Kind(Enum):
    INTEGER = "integer"
    NUMBER = "number"  # seconds, megabytes...: > minimum (0), <= maximum
    BOOLEAN = "true or false"
    TEXT = "string"
    CHOICE = "one of"
    VALUE = "value"  # checked by the code that reads it (a list, an object, a URL...)


_UNSET = object()


@dataclass(frozen=True)
class Setting:
    key: str
    scope: Scope
    kind: Kind
    doc: str
    default: Any = None
    default_doc: str | None = None  # how a computed default reads in the docs ("REQUEST_TIMEOUT")
    minimum: float = 0
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def read(self, data: Mapping[str, Any], where: str = "", default: Any = _UNSET) -> Any:
        """The value of this setting in ``data`` (an endpoint's entry, or the top level), checked;
        ``default`` when absent (this setting's own default unless given). ConfigError naming
        ``where.KEY`` and what is expected otherwise."""
        if self.key not in data:
            return self.default if default is _UNSET else default
        value = data[self.key]
        if not self.accepts(value):
            raise ConfigError(expected(key_of(where, self.key), self.expectation, value))
        return float(value) if self.kind is Kind.NUMBER else value

    def accepts(self, value: Any) -> bool:
        kind = self.kind
        if kind is Kind.INTEGER:
            return (not isinstance(value, bool) and isinstance(value, int) and self.minimum <= value
                    and (self.maximum is None or value <= self.maximum))
        if kind is Kind.NUMBER:
            return (not isinstance(value, bool) and isinstance(value, (int, float)) and value > self.minimum
                    and (self.maximum is None or value <= self.maximum))
        if kind is Kind.BOOLEAN:
            return isinstance(value, bool)
        if kind is Kind.TEXT:
            return isinstance(value, str)
        if kind is Kind.CHOICE:
            return value in self.choices
        return True

    @property
    def expectation(self) -> str:
        """What the error message says is expected."""
        if self.kind is Kind.INTEGER:
            return f"an integer >= {self.minimum:g} and <= {self.maximum:g}"
        if self.kind is Kind.NUMBER:
            return f"a number > {self.minimum:g} and <= {self.maximum:g}"
        if self.kind is Kind.CHOICE:
            return " or ".join(f'"{c}"' for c in self.choices)
        return {Kind.BOOLEAN: "true or false", Kind.TEXT: "a string"}.get(self.kind, "a valid value")

    @property
    def type_doc(self) -> str:
        if self.kind is Kind.INTEGER:
            return f"integer, {self.minimum:g}-{self.maximum:g}"
        if self.kind is Kind.NUMBER:
            return f"number, > {self.minimum:g}" + (f" and <= {self.maximum:g}" if self.maximum else "")
        if self.kind is Kind.CHOICE:
            return " or ".join(f"`{c}`" for c in self.choices)
        return {Kind.BOOLEAN: "`true` or `false`", Kind.TEXT: "string"}.get(self.kind, "see meaning")


def key_of(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def expected(key: str, what: str, got: Any) -> str:
    try:
        shown = json.dumps(got)
    except (TypeError, ValueError):
        shown = repr(got)
    return f"{key}: expected {what}, got {shown}"


_T, _E, _V = Scope.TOP, Scope.ENDPOINT, Scope.ENV
_SECONDS = 86_400

SETTINGS: tuple[Setting, ...] = (
    # -- the top level of config_gateway.txt ------------------------------------------------------
    Setting("CONFIG_ENDPOINTS", _T, Kind.VALUE, "endpoint name → its entry; the names are the `SIGNATURE`s, and "
            "servers start in this order", {}),
    Setting("SERVER_NAME", _T, Kind.TEXT, "shown in `SYSTEM_STATUS.server_name`", "base_ai_app"),
    Setting("ADMIN_TOKEN", _T, Kind.VALUE, "admin token (8+ characters) when `BIS_ADMIN_TOKEN` is not set; "
            "else one is generated and kept in `_cache/_data/admin_token`"),
    Setting("RESPONSE_FORMAT", _T, Kind.CHOICE, "`flat` puts the worker's keys at the top level of `/run` "
            "answers (old clients)", "nested", choices=("nested", "flat")),
    Setting("MAX_BODY_MB", _T, Kind.NUMBER, "largest request body, in MB → 413 beyond (declared or chunked; a "
            "declared one is refused before it is sent)", 8, maximum=4096),
    Setting("FIRST_SERVER_PORT", _T, Kind.INTEGER, "first port of the model servers", 5003, minimum=1,
            maximum=65535),
    Setting("LAST_SERVER_PORT", _T, Kind.INTEGER, "last port of the model servers", None, "FIRST_SERVER_PORT + 7",
            minimum=1, maximum=65535),
    Setting("STARTUP_TIMEOUT", _T, Kind.NUMBER, "seconds a server may take to become ready before it is FAILED",
            300, maximum=_SECONDS),
    Setting("SHUTDOWN_GRACE", _T, Kind.NUMBER, "seconds requests in flight get to finish on shutdown before "
            "SIGKILL", 10, maximum=_SECONDS),
    Setting("GATEWAY_THREADS", _T, Kind.INTEGER, "threads of the gateway's Flask routes (status, admin, metrics); "
            "`/run` needs none: it is answered in the HTTP front's event loop", 128, minimum=8, maximum=1024),
    Setting("HEADER_TIMEOUT", _T, Kind.NUMBER, "seconds a client has to send a request head, from its first byte "
            "(and a new connection to send one) → 408 and closed", 10,
            maximum=_SECONDS),
    Setting("BODY_TIMEOUT", _T, Kind.NUMBER, "seconds a client has to send the body once its head has arrived → "
            "408 and closed", 30,
            maximum=_SECONDS),
    Setting("KEEPALIVE_TIMEOUT", _T, Kind.NUMBER, "seconds an idle keep-alive connection is kept (less once half "
            "the connection slots are taken, down to 1 s when all are)", 75, maximum=_SECONDS),
    Setting("MAX_CONNECTIONS", _T, Kind.INTEGER, "client connections held at once; past it the one idle the "
            "longest makes room, and a new one gets 503 only when none is idle (0: the open-file limit − 1024, "
            "at most 100,000)", 0, minimum=0, maximum=1_000_000),
    Setting("MAX_JSON_CONTAINERS", _T, Kind.INTEGER, "arrays and objects one JSON body may hold → 413 beyond",
            500_000, minimum=1, maximum=10**9),
    Setting("MAX_JSON_VALUES", _T, Kind.INTEGER, "values one JSON body may hold (V2 BYTES elements count too) "
            "→ 413 beyond", 4_000_000, minimum=1, maximum=10**9),
    Setting("MAX_JSON_DEPTH", _T, Kind.INTEGER, "how deeply arrays and objects may nest → 400 beyond", 256,
            minimum=1, maximum=900),
    Setting("PROTECT_NOTIFICATIONS", _T, Kind.BOOLEAN, "`/notifications` takes the admin token", False),
    Setting("STRICT_STARTUP", _T, Kind.BOOLEAN, "exit with code 2 when an endpoint fails to start (its file does "
            "not import, its model does not load), instead of serving the others; the `--strict` flag does the "
            "same", False),
    Setting("SHM_THRESHOLD_KB", _T, Kind.NUMBER, "between the steps of a pipeline, an array (a buffer) of this "
            "size or more goes through shared memory (a memfd the next step maps read-only), a smaller one with the "
            "value on the channel", 64, maximum=10**7),
    Setting("ALLOW_CLIENT_SHM", _T, Kind.BOOLEAN, "the Open Inference Protocol's system shared-memory extension: "
            "clients on this host register POSIX shared-memory regions (`/v2/systemsharedmemory/...`, loopback "
            "clients only) and infer requests name them instead of carrying tensors", False),
    Setting("JOB_TTL", _T, Kind.NUMBER, "seconds a finished job (and its result) is kept for `GET /jobs/<id>`, "
            "then purged", 86_400, maximum=365 * _SECONDS),
    Setting("JOB_MAX_ATTEMPTS", _T, Kind.INTEGER, "attempts a job gets when it is lost (its gateway or model "
            "server died while it ran, or a 502); past them it is FAILED", 3, minimum=1, maximum=100),
    Setting("JOB_STORE_MAX_MB", _T, Kind.NUMBER, "disk the job store may use, in MB (its database and the "
            "payload files beside it) → 507 for new jobs beyond", 1024, maximum=10**7),
    Setting("JOB_STORE", _T, Kind.VALUE, "where jobs are kept: `\"sqlite\"`, embedded in the cache volume (one "
            "gateway), or a Redis address, `\"redis://host:6379/0\"`, one queue shared by many gateways (its password "
            "from the environment, `BIS_JOB_STORE_PASSWORD`); the environment variable `BIS_JOB_STORE` overrides it",
            "sqlite"),
    Setting("JOB_LEASE_S", _T, Kind.NUMBER, "on a Redis store, seconds a gateway's claim on a running job lasts "
            "unless renewed (every third of it): a job whose gateway died runs again on another once it runs out",
            30, minimum=0.5, maximum=3600),
    Setting("WEBHOOK_RETRY_S", _T, Kind.NUMBER, "seconds a job's webhook delivery is retried for (at once, then "
            "after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h...)", 86_400, maximum=30 * _SECONDS),
    Setting("WEBHOOK_ALLOWED_HOSTS", _T, Kind.VALUE, "host names (or addresses) a job's `WEBHOOK` may point at, "
            "`\"*.example.com\"` for a domain's hosts; unset: every host, loopback included (see the jobs guide on "
            "server-side request forgery)"),
    Setting("DEFAULT_SERVER", _T, Kind.VALUE, "accepted for compatibility with the original; not used"),
    Setting("NO_STARTUP_WAIT", _T, Kind.BOOLEAN, "accepted for compatibility with the original: the gateway "
            "always waits for each server's readiness handshake", False),
    # -- an endpoint's entry --------------------------------------------------------------------------
    Setting("PIPELINE", _E, Kind.VALUE, "makes the entry a pipeline of other endpoints: `[\"decode\", \"model\"]` "
            "runs them in order, `{\"a\": [], \"b\": [\"a\"]}` as a graph of step -> its parents; such an entry "
            "takes only PIPELINE, REQUEST_TIMEOUT (the whole flow's), DESCRIPTION and DISABLED (see the pipelines "
            "guide)"),
    Setting("NR_WORKERS", _E, Kind.INTEGER, "worker instances (model copies) in the server (a warning when "
            "absent)", 5, minimum=1, maximum=256),
    Setting("HOST", _E, Kind.VALUE, "address the server binds and the gateway calls; `\"NO_HOST\"` marks a "
            "support process", "127.0.0.1"),
    Setting("SERVER_CLASS", _E, Kind.VALUE, "endpoint file to use, so several endpoints can share one (the "
            "original's `-bis` entries)", None,
            "the endpoint's name"),
    Setting("DISABLED", _E, Kind.BOOLEAN, "not started at boot; an admin can start it with `/start_server`", False),
    Setting("DESCRIPTION", _E, Kind.VALUE, "shown in `/list_servers`", ""),
    Setting("REQUEST_TIMEOUT", _E, Kind.NUMBER, "seconds per request, queue wait included → 504", 60,
            maximum=_SECONDS),
    Setting("MAX_QUEUE", _E, Kind.INTEGER, "requests that may wait for a free worker → 503 beyond", 64, minimum=1,
            maximum=100_000),
    Setting("SERVER_THREADS", _E, Kind.INTEGER, "threads of the model server's Flask routes (`/health`, `/stats`, "
            "admin); its `/run` needs none: it is answered in its port's event loop", None,
            "min(NR_WORKERS + MAX_QUEUE + 4, 128)", minimum=1, maximum=1024),
    Setting("RESPONSE_FORMAT", _E, Kind.CHOICE, "this endpoint's `nested` or `flat`", None, "the top-level value",
            choices=("nested", "flat")),
    Setting("MAX_BATCH_SIZE", _E, Kind.INTEGER, "above 1: dynamic batching ([Batching](../guide/batching.md))", 1,
            minimum=1, maximum=4096),
    Setting("MAX_BATCH_WAIT_MS", _E, Kind.NUMBER, "how long a worker that has the first request of a batch waits "
            "for more", 5, maximum=10_000),
    Setting("NR_REPLICAS", _E, Kind.INTEGER, "model-server processes of this endpoint, for models that hold the "
            "GIL ([Writing an endpoint](../guide/endpoints.md))", 1, minimum=1, maximum=16),
    Setting("MAX_REQUESTS", _E, Kind.INTEGER, "recycle a server after this many answers (0: never): replaced "
            "blue-green by a fresh process, as gunicorn's `max_requests`", 0, minimum=0,
            maximum=1_000_000_000),
    Setting("MAX_REQUESTS_JITTER", _E, Kind.INTEGER, "up to this many more, drawn at each start, so that replicas do "
            "not recycle together", 0, minimum=0,
            maximum=1_000_000_000),
    Setting("MAX_RSS_MB", _E, Kind.NUMBER, "recycle a server whose process tree (its workers' children "
            "included) is larger, measured every second (absent: never)", None,
            maximum=1e9),
    Setting("STREAM_IDLE_TIMEOUT", _E, Kind.NUMBER, "streamed answers: seconds the next item may take once the first "
            "has come → `Timeout` error event", None,
            "REQUEST_TIMEOUT", maximum=_SECONDS),
    Setting("STREAM_TIMEOUT", _E, Kind.NUMBER, "streamed answers: seconds the whole stream may take → `Timeout` "
            "error event", 600, maximum=_SECONDS),
    Setting("WARMUP_INPUTS", _E, Kind.VALUE, "request bodies every worker runs through its hooks before the "
            "server reports ready ([Warmup](../guide/warmup.md))"),
    Setting("DEVICES", _E, Kind.VALUE, "`\"cpu\"` or a list such as `[\"cuda:0\", \"cuda:1\"]`: replica *i* runs on "
            "`DEVICES[i % n]` ([Devices](../guide/devices.md))"),
    Setting("MODEL_METADATA", _E, Kind.VALUE, "the model's V2 metadata: platform, inputs and outputs "
            "([Open Inference Protocol](../protocols/v2.md))"),
    Setting("OPENAI", _E, Kind.CHOICE, "serve the endpoint on OpenAI's API as model `<endpoint name>`: on "
            "`/v1/chat/completions`, `/v1/completions` or `/v1/embeddings` ([OpenAI API](../protocols/openai.md))",
            choices=KINDS),
    Setting("URLS", _E, Kind.VALUE, "`\"http://host:port\"` (or `https://`: TLS) or a list of them, all of one "
            "scheme: model servers this gateway did not start; a host name with several addresses is one server "
            "per address ([Remote endpoints](../deploy/remote-endpoints.md))"),
    Setting("PING_INTERVAL", _E, Kind.NUMBER, "support processes: seconds between metric posts", 10,
            maximum=_SECONDS),
    # -- the environment ------------------------------------------------------------------------------
    Setting("BIS_ADMIN_TOKEN", _V, Kind.TEXT, "the admin token (wins over `ADMIN_TOKEN`)"),
    Setting("BIS_ENDPOINT_TOKEN", _V, Kind.TEXT, "the secret of a gateway and the model servers it did not start "
            "(`X-Endpoint-Token`)"),
    Setting("BIS_ENDPOINT_TOKEN_FILE", _V, Kind.TEXT, "a file holding `BIS_ENDPOINT_TOKEN` (a Docker or Kubernetes "
            "secret)"),
    Setting("BIS_WEBHOOK_SECRET", _V, Kind.TEXT, "`whsec_<base64>`: the key job webhooks are signed with (else "
            "one is generated and kept in `_cache/_data/webhook_secret`)"),
    Setting("BIS_WEBHOOK_SECRET_FILE", _V, Kind.TEXT, "a file holding `BIS_WEBHOOK_SECRET` (a Docker or Kubernetes "
            "secret)"),
    Setting("BIS_API_KEYS_FILE", _V, Kind.TEXT, "the API keys file: with it, the inference routes take a key "
            "([API keys](../operations/api-keys.md))"),
    Setting("BIS_JOB_STORE", _V, Kind.TEXT, "overrides `JOB_STORE` (`redis://host:port/db`: one queue for many "
            "gateways)"),
    Setting("BIS_JOB_STORE_PASSWORD", _V, Kind.TEXT, "the Redis job store's password"),
    Setting("BIS_JOB_STORE_PASSWORD_FILE", _V, Kind.TEXT, "a file holding `BIS_JOB_STORE_PASSWORD` (a Docker or "
            "Kubernetes secret)"),
    Setting("BIS_TLS_CERT_FILE", _V, Kind.TEXT, "`endpoint <name>`: serve TLS with this certificate"),
    Setting("BIS_TLS_KEY_FILE", _V, Kind.TEXT, "`endpoint <name>`: the certificate's key"),
    Setting("BIS_TLS_CA_FILE", _V, Kind.TEXT, "authorities that `https://` URLS are checked against (default: the "
            "system's)"),
    Setting("BIS_LOG_LEVEL", _V, Kind.TEXT, "`DEBUG`, `INFO`, `WARNING`...", "INFO"),
    Setting("BIS_HEALTH_URL", _V, Kind.TEXT, "the image's health check: which `/health` it probes",
            "http://127.0.0.1:5002/health"),
)

_BY_SCOPE: dict[Scope, dict[str, Setting]] = {scope: {} for scope in Scope}
for _setting in SETTINGS:
    _BY_SCOPE[_setting.scope][_setting.key] = _setting


def setting(key: str, scope: Scope = Scope.TOP) -> Setting:
    return _BY_SCOPE[scope][key]


def read(data: Mapping[str, Any], key: str, scope: Scope = Scope.TOP, where: str = "",
         default: Any = _UNSET) -> Any:
    """The checked value of setting ``key`` in ``data`` (see :meth:`Setting.read`)."""
    return _BY_SCOPE[scope][key].read(data, where, default)


def did_you_mean(keys: Iterable[str], scope: Scope, known: Iterable[str] = ()) -> dict[str, str]:
    """The keys that are no setting of ``scope`` (nor in ``known``) but close to one: key -> setting."""
    names = list(_BY_SCOPE[scope])
    known = set(known)
    found = {}
    for key in keys:
        if isinstance(key, str) and key not in _BY_SCOPE[scope] and key not in known:
            close = difflib.get_close_matches(key.upper(), names, n=1, cutoff=0.8)
            if close:
                found[key] = close[0]
    return found


_REFERENCE_NOTES = {
    Scope.ENDPOINT: "Any other key of an entry is the endpoint's own configuration: upper-cased, merged over "
                    "its module's `_CONFIG`, read as `self.cfg_<key>`.",
}


def reference(scopes: Iterable[Scope] = tuple(Scope)) -> str:
    """The configuration reference as Markdown tables, one per scope (the docs' reference page)."""
    parts = []
    for scope in scopes:
        parts += [f"## {scope.value[0].upper()}{scope.value[1:]}", "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        for item in _BY_SCOPE[scope].values():
            default = item.default_doc or ("—" if item.default in (None, "", {}) else f"`{json.dumps(item.default)}`")
            parts.append(f"| `{item.key}` | {item.type_doc} | {default} | {item.doc} |")
        parts += ["", _REFERENCE_NOTES.get(scope, ""), ""]
    return "\n".join(parts)
