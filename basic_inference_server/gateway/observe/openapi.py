"""The gateway's OpenAPI 3.0.3 description, answered on ``GET /openapi.json``.

It describes what the gateway really answers, errors included: every route of :mod:`.app`
(and ``POST /run``, answered in the HTTP front's loop by :mod:`..routing.runpath`), with the
one JSON error shape of :mod:`basic_inference_server.errors`; the Open Inference Protocol's
routes are in :mod:`.openapi_v2`. ``tests/unit/test_openapi_document.py``
keeps its paths and methods equal to the app's routes; ``tests/integration/test_openapi.py``
checks a live gateway's answers against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from ...config import SYSTEM_STATUS
from ...openaishape import KINDS
from ...states import ReloadState
from .metrics import REMOTE_STATES, STATES
from .openapi_build import (
    Schema,
    _answer,
    _body,
    _error,
    _int,
    _map,
    _nullable,
    _obj,
    _operation,
    _ref,
    _request_id,
    _retry_after,
    _schema,
    _str,
    _with_envelope,
)
from .openapi_jobs import jobs_paths, jobs_schemas
from .openapi_openai import openai_paths, openai_schemas
from .openapi_stream import RUN_STREAMING, STREAM_FLAG, stream_content, stream_end_schema
from .openapi_v2 import v2_paths, v2_schemas

OPENAPI_VERSION = "3.0.3"


# -- components ----------------------------------------------------------------------------------
def _schemas() -> dict[str, Schema]:
    server_info = _obj({
        "STATE": _str(enum=[*STATES, *(s for s in REMOTE_STATES if s not in STATES)]),
        "ONLINE": {"type": "boolean"},
        "PID": _nullable(_int()),
        "UPTIME": _str("h:mm:ss since the process started"),
        "RESTARTS": _int(minimum=0),
        "LAST_EXIT_CODE": _nullable(_int()),
        "ERROR": _nullable(_str()),
        "DESCRIPTION": _str(),
        "HOST": _str("model servers only"),
        "PORT": _nullable(_int()),
        "SERVER_CLASS": _str(),
        "WORKERS": _obj({"total": _int(), "ready": _int(), "loading": _int(), "busy": _int(),
                         "failed": _int(), "queue": _int(), "max_queue": _int()}, ["total", "ready"]),
        "HEALTH_FAILURES": _int(minimum=0),
        "GENERATION": _int(minimum=1),
        "LAST_RELOAD": _nullable(_schema("Reload")),
        "REQUESTS_SERVED": _int(minimum=0), "RSS_MB": _nullable({"type": "number"}), "RECYCLES": _map(_int()),
        "DEVICE": _nullable(_str("DEVICES: this replica's device (cpu, cuda:<n>)")),
        "OPENAI": _nullable(_str("its kind on OpenAI's API (/v1), from its entry's OPENAI",
                                 enum=list(KINDS))),
        "REMOTE": {"type": "boolean", "description": "an address of a remote endpoint (URLS), named "
                   "<endpoint>@<address>: a model server this gateway did not start"},
        "URL": _str("remote: the URL of URLS this address was resolved from"),
        "REQUESTS_UNREACHED": _int(minimum=0, description="remote: requests that could not reach it"),
        "IN_FLIGHT": _int(minimum=0, description="remote: requests forwarded to it, not answered yet"),
    }, ["STATE", "ONLINE", "PID", "UPTIME", "RESTARTS", "LAST_EXIT_CODE", "ERROR", "DESCRIPTION"])
    support_data = _obj({
        "data": _nullable(_obj(description="the latest metrics the process posted")),
        "received": _nullable(_str()),
        "age_s": _nullable({"type": "number"}),
        "stale": {"type": "boolean"},
    }, ["data", "received", "age_s", "stale"])
    number = {"type": "number"}
    system_status = _obj({
        "SYSTEM_STATUS": _obj({
            "server_name": _str(), "info": _str(), "mem_source": _str(),
            **{key: number for key in ("mem_total", "mem_avail", "mem_gateway", "mem_used", "mem_sys",
                                       "disk_total", "disk_avail")},
            "mem_servers": _map(number), "system": _str(), "py": _str(),
            "system_support_services": _map(_schema("SupportData")),
        }, ["server_name", "mem_total", "mem_avail", "mem_gateway", "mem_servers", "mem_used", "mem_sys"]),
        "SYSTEM_ALERTS": _obj({"mem_alert": {"type": "boolean"}, "disk_alert": {"type": "boolean"},
                               "alerts": {"type": "array", "items": _str()}}, ["mem_alert", "disk_alert", "alerts"]),
        "SYSTEM_HISTORY": _obj({
            "CURRENT_STARTUP": _nullable(_str()), "PREVIOUS_STARTUP": _nullable(_str()),
            "LAST_SHUTDOWN": _nullable(_str()), "LAST_RUNTIME_HOURS": _nullable(_str()),
            "RESTARTS": _map(_int()),
            "EVENTS": {"type": "array", "items": _obj({"time": _str(), "event": _str(), "name": _str(),
                                                       "detail": _str()}, ["time", "event"])},
        }),
    }, ["SYSTEM_STATUS", "SYSTEM_ALERTS", "SYSTEM_HISTORY"])
    envelope = _obj({
        "time": _str("gateway's local time, YYYY-MM-DD HH:MM:SS"), "ver": _str("app version"),
        "ver-app": _str("app version"), "ver-lib": _str("basic_inference_server version"),
        "gw-uptime": _str("h:mm:ss"), "hostname": _str(),
    }, ["time", "ver", "ver-app", "ver-lib", "gw-uptime", "hostname"])
    servers = _obj({"AVAIL_SERVERS": _map(_schema("ServerInfo")),
                    "SUPPORT_PROCESSES": _map(_schema("ServerInfo"))}, ["AVAIL_SERVERS", "SUPPORT_PROCESSES"])
    return {
        "Error": _obj({
            "ERROR": _str("the message (the key clients of the original system read)"),
            "error": _obj({"type": _str("stable error type, e.g. UnknownSignature"), "message": _str(),
                           "request_id": _str("the X-Request-ID of the request")}, ["type", "message"]),
        }, ["ERROR", "error"]),
        "Envelope": envelope,
        "RunRequest": _obj({"SIGNATURE": _str(
            f"the endpoint to run (see /list_servers), or {SYSTEM_STATUS}; any other key is the model's input"),
            "STREAM": STREAM_FLAG}, ["SIGNATURE"], additionalProperties=True),
        "ModelAnswer": _with_envelope(_obj({
            "predict_result": {"nullable": True, "description": "what the worker's _post_process returned "
                               "(for a generator not streamed: the list of its items); with RESPONSE_FORMAT "
                               "flat its keys are at the top level instead"},
            "call_id": _int(description="counts the calls of that model server"),
            "signature": _str("<gateway id>.<SERVER_CLASS>.<worker class>.<worker index>"),
            "worker_id": _str("<gateway id>:<worker index>"),
        }, ["call_id", "signature", "worker_id"])),
        "StreamEnd": stream_end_schema(_schema("Envelope")),
        "SystemStatus": _with_envelope(system_status),
        "ServerInfo": server_info,
        "SupportData": support_data,
        "Servers": _with_envelope(servers),
        # Keyed by call id; the envelope keys are listed so that the arrays' schema leaves them alone.
        "Notifications": _with_envelope(_obj({key: {} for key in envelope["properties"]}, additionalProperties={
            "type": "array", "items": _obj({"NOTIFICATION_TYPE": _str(), "MODULE": _str(), "NOTIF": _str(),
                                            "time": _str()})})),
        "SignatureRequest": _obj({"SIGNATURE": _str("an endpoint name")}, ["SIGNATURE"], additionalProperties=True),
        "AdminRequest": _obj({
            "SIGNATURE": _str("an endpoint name (see each route)"),
            "TOKEN": _str("the admin token, for clients that cannot send an Authorization header"),
        }, ["SIGNATURE"], additionalProperties=True),
        "Message": _obj({"MESSAGE": _str()}, ["MESSAGE"]),
        "Reload": _obj({"SIGNATURE": _str(), "REASON": _str(enum=["reload", "max_requests", "max_rss"]),
                        "STATE": _str(enum=[state.name for state in ReloadState]),
                        "GENERATION": _int(), "PIDS": {"type": "array", "items": _int()},
                        "SECONDS": _nullable({"type": "number"}), "ERROR": _nullable(_str()),
                        "IN_PLACE": _nullable(_str())}, ["SIGNATURE", "STATE", "GENERATION", "PIDS"]),
        "DashboardData": _with_envelope(_obj({
            **servers["properties"],
            "SUPPORT_DATA": _map(_schema("SupportData")),
            "MEMORY_MB": _map(_nullable(number)),
            "REQUESTS": _map(_map(_int())),
            "ACTIVE_STREAMS": _map(_int(minimum=0)),
            "SERIES": _obj({"interval_s": number, "t": {"type": "array", "items": number},
                            "signatures": _map(_obj())}, ["interval_s", "t", "signatures"]),
            "EVENTS": {"type": "array", "items": _obj({"time": _str(), "event": _str(), "name": _str(),
                                                       "detail": _str()}, ["time", "event"])},
        }, ["AVAIL_SERVERS", "SUPPORT_PROCESSES", "SUPPORT_DATA", "MEMORY_MB", "REQUESTS", "ACTIVE_STREAMS",
            "SERIES", "EVENTS"])),
    }


def _responses() -> dict[str, Any]:
    return {
        "BadRequest": _error("BadRequest: malformed JSON (NaN and Infinity included), empty body, body not an "
                             "object, nesting too deep, SIGNATURE missing or not a string, a bad value"),
        "Unauthorized": _error("Unauthorized: admin token missing or wrong"),
        "NotFound": _error("UnknownSignature (not a started endpoint) or SignatureDisabled"),
        "Conflict": _error("Conflict: the server is already running"),
        "PayloadTooLarge": _error("PayloadTooLarge: body over MAX_BODY_MB (declared or chunked)",
                                  {"X-Request-ID": _ref("headers", "RequestIdUnlessRefused")}),
        "InputError": _error("a worker hook raised InputError(message, status) with this 4xx status, or "
                             "_pre_process raised (400 InvalidInput)"),
        "ModelError": _error("ModelError: _predict or _post_process raised, or the result is not JSON"),
        "ServerDied": _error("ServerDied: the model server died or closed the connection while serving"),
        "Unavailable": _error("ServerUnavailable (endpoint starting, restarting, stopped or failed; gateway "
                              "shutting down) or Overloaded (NR_WORKERS + MAX_QUEUE requests already held)",
                              _retry_after()),
        "Timeout": _error("Timeout: the request did not finish within REQUEST_TIMEOUT"),
        "MethodNotAllowed": _error("MethodNotAllowed: the path does not take this method; every path answers "
                                   "it to the methods it does not list", {"Allow": _ref("headers", "Allow")}),
    }


def _components(signatures: list[str]) -> dict[str, Any]:
    return {
        "schemas": {**_schemas(), **v2_schemas(), **jobs_schemas(), **openai_schemas()},
        "responses": _responses(),
        "parameters": {
            "RequestId": {"name": "X-Request-ID", "in": "header", "required": False,
                          "description": "id to follow the request in the logs; another value is replaced",
                          "schema": _request_id()},
            "Signature": {"name": "SIGNATURE", "in": "query", "required": True,
                          "description": "an endpoint name", "schema": _str(),
                          **({"examples": {name: {"value": name} for name in signatures}} if signatures else {})},
        },
        "headers": {
            "RequestId": {"required": True, "description": "the client's X-Request-ID when valid, else a new id",
                          "schema": _request_id()},
            "RequestIdUnlessRefused": {
                "required": False, "schema": _request_id(),
                "description": "absent when the body is over twice MAX_BODY_MB: the HTTP server refuses it "
                               "before the gateway reads the request"},
            "RetryAfter": {"required": True, "description": "seconds to wait before retrying",
                           "schema": _int(minimum=0)},
            "Allow": {"required": True, "description": "the methods the path takes", "schema": _str()},
        },
        "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "the admin token (BIS_ADMIN_TOKEN, ADMIN_TOKEN or _cache/_data/admin_token); "
                           "it may also be sent as TOKEN in the JSON body"}},
    }


# -- paths ---------------------------------------------------------------------------------------
FORWARDED = {"502": "ServerDied", "503": "Unavailable", "504": "Timeout"}  # answers of a forwarded call


def _run(run_path: str, signatures: list[str]) -> dict[str, Any]:
    examples = {name: {"SIGNATURE": name} for name in signatures}
    examples[SYSTEM_STATUS] = {"SIGNATURE": SYSTEM_STATUS}
    answer = _answer("the model's answer (or SYSTEM_STATUS's) with the envelope, or its items streamed",
                     {"anyOf": [_schema("ModelAnswer"), _schema("SystemStatus")]})
    answer["content"].update(stream_content())
    run = _operation(
        "run", "Run the model of an endpoint on the inputs", "inference", {
            "200": answer,
            "400": "BadRequest", "404": "NotFound", "413": "PayloadTooLarge", "4XX": "InputError",
            "500": "ModelError", **FORWARDED},
        body=_body(_schema("RunRequest"), examples=examples),
        description="Routed by SIGNATURE to the least busy READY replica of that endpoint; the body is "
                    f"forwarded as received. Configured endpoints: {', '.join(signatures) or 'none'}.\n\n"
                    + RUN_STREAMING)
    return {run_path: {"post": run}}


def _status_paths(signatures: list[str]) -> dict[str, Any]:
    def get_and_post(name: str, summary: str, answer: dict[str, Any]) -> dict[str, Any]:
        return {"get": _operation(f"get{name}", summary, "status", {"200": answer}),
                "post": _operation(f"post{name}", summary, "status", {"200": answer},
                                   body=_body({"description": "ignored"}, required=False))}

    status = _answer("machine, gateway, children, support data and history", _schema("SystemStatus"))
    servers = _answer("every started model server and support process, by name", _schema("Servers"))
    notes = _answer("the server's notifications by call id (GENERAL, INIT, ...), now forgotten",
                    _schema("Notifications"))
    note_errors = {"400": "BadRequest", "404": "NotFound", **FORWARDED}
    examples = {name: {"SIGNATURE": name} for name in signatures}
    notifications = {
        "get": _operation("getNotifications", "Return and forget an endpoint's notifications", "status",
                          {"200": notes, **note_errors}, parameters=[_ref("parameters", "Signature")]),
        "post": _operation("postNotifications", "Return and forget an endpoint's notifications", "status",
                           {"200": notes, **note_errors, "413": "PayloadTooLarge"},
                           body=_body(_schema("SignatureRequest"), examples=examples)),
    }
    ready = _answer("every started server is READY", _obj({"status": _str(enum=["ready"]), "servers": _int()},
                                                           ["status", "servers"]))
    not_ready = _error("NotReady (names the servers that are not READY, under NOT_READY) or "
                       "ServerUnavailable while shutting down", _retry_after())
    return {
        "/system_status": get_and_post("SystemStatus", "Machine and gateway status", status),
        "/list_servers": get_and_post("Servers", "List the model servers and support processes", servers),
        "/notifications": notifications,
        "/health": {"get": _operation("health", "The gateway is running", "status", {
            "200": _answer("always, while the gateway runs",
                           _with_envelope(_obj({"status": _str(enum=["ok"])}, ["status"])))})},
        "/ready": {"get": _operation("ready", "Every started server is READY", "status",
                                     {"200": ready, "503": not_ready})},
        "/metrics": {"get": _operation("metrics", "Prometheus metrics", "observability", {
            "200": _answer("Prometheus text exposition format", _str(), "text/plain")})},
        "/dashboard": {"get": _operation("dashboard", "Live dashboard page", "observability", {
            "200": _answer("an HTML page that polls /dashboard/data", _str(), "text/html")})},
        "/dashboard/data": {"get": _operation("dashboardData", "The dashboard's figures", "observability", {
            "200": _answer("servers, support data, memory, requests by status, streams in progress, "
                           "recent rates and the last events",
                           _schema("DashboardData"))})},
        "/openapi.json": {"get": _operation("openapi", "This description", "observability", {
            "200": _answer("OpenAPI 3 document", _obj({"openapi": _str(), "info": _obj(), "paths": _obj()},
                                                      ["openapi", "info", "paths"]))})},
    }


def _admin_paths() -> dict[str, Any]:
    def admin(operation_id: str, summary: str, body: Schema, answers: dict[str, Any],
              security: list[dict[str, list[str]]] | None = None, description: str | None = None) -> dict[str, Any]:
        responses = {**answers, "400": "BadRequest", "401": "Unauthorized", "413": "PayloadTooLarge"}
        return {"post": _operation(operation_id, summary, "admin", responses, body=_body(body),
                                   security=security or [{"bearerAuth": []}], description=description)}

    def message(**properties: Schema) -> Schema:
        return {"allOf": [_schema("Message"), _obj(properties)]}

    workers_request = {"allOf": [_schema("AdminRequest"), _obj({"NR_WORKERS": _int(minimum=1, maximum=256)},
                                                               ["NR_WORKERS"])]}
    support_request = {"allOf": [_schema("AdminRequest"), _obj({"data": _obj(
        description="the metrics; they may also be sent flat, beside SIGNATURE")})]}
    return {
        "/update_workers": admin("updateWorkers", "Resize an endpoint's worker pool", workers_request, {
            "200": _answer("the new size", message(NR_WORKERS=_int(), PREVIOUS=_int(), WORKERS=_obj())),
            "404": "NotFound", **FORWARDED}),
        "/start_server": admin("startServer", "Start a stopped, failed or disabled entry of the config",
                               _schema("AdminRequest"), {
            "202": _answer("starting", message(STATE=_str(enum=list(STATES)), PORT=_nullable(_int()))),
            "404": "NotFound", "409": "Conflict", "503": "Unavailable"}),
        "/reload_server": admin("reloadServer", "Replace an endpoint's servers (\"*\": every started one) by a "
                                "new generation with the file and entry as they are now, blue-green",
                                _schema("AdminRequest"), {
            "200": _answer("switched", message(RELOADS={"type": "array", "items": _schema("Reload")})),
            "404": "NotFound", "422": _error("ReloadFailed: the new generation did not start; the old one goes on "
                                             "serving (RELOADS says why)")}),
        "/reload_config": admin("reloadConfig", "Read config_gateway.txt again: start added endpoints, stop removed "
                                "ones, replace changed ones blue-green (also on SIGHUP)", _schema("AdminRequest"), {
            "200": _answer("in force", message(**{k: {"type": "array"} for k in (
                "ADDED", "REMOVED", "CHANGED", "UNCHANGED", "NEEDS_RESTART", "STARTED", "RELOADS")})),
            "409": "Conflict"}),
        "/kill_server": admin("killServer", "Stop a child for good (\"*\": every child)", _schema("AdminRequest"), {
            "200": _answer("stopped", message(KILLED=_map(_obj({"PID": _nullable(_int()),
                                                                "RETURN_CODE": _nullable(_int())})))),
            "404": "NotFound"}),
        "/shutdown": admin("shutdown", "Stop the gateway and its children cleanly", _schema("AdminRequest"), {
            "200": _answer("the gateway stops once this answer is sent", _with_envelope(_schema("Message")))},
            description="SIGNATURE must be SAFE_KILL_SERVER_CMD (any case), else 400."),
        "/support_update_status": admin(
            "supportUpdateStatus", "A support process posts its metrics", support_request, {
                "200": _answer("stored", _schema("Message")), "404": "NotFound"},
            security=[{}, {"bearerAuth": []}],
            description="No token needed from loopback or from the gateway's own address."),
    }


def openapi_document(signatures: list[str], version: str, *, run_path: str = "/run") -> dict[str, Any]:
    """The OpenAPI 3.0.3 description of the gateway, as a JSON-ready dict.

    Args:
        signatures: the endpoint names the gateway serves (the keys of ``/list_servers``'s
            ``AVAIL_SERVERS``); they become examples of ``SIGNATURE``, not an ``enum``, since
            any other name is a documented 404. Order, duplicates and replica keys
            (``name#2``) do not matter.
        version: the document's ``info.version`` (the gateway's ``LIB_VER``).
        run_path: the gateway's execution path (``server_execution_path``).
    """
    names = sorted({name.split("#", 1)[0] for name in signatures})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "basic_inference_server gateway",
            "version": version,
            "description": "One HTTP port in front of supervised model servers. Every error is JSON "
                           "(#/components/schemas/Error) with a real status code; every path answers "
                           "405 MethodNotAllowed, with an Allow header, to a method it does not list.",
        },
        "tags": [{"name": name} for name in ("inference", "jobs", "v2", "openai", "status", "observability",
                                                 "admin")],
        "paths": {**_run(run_path, names), **jobs_paths(names), **v2_paths(), **openai_paths(), **_status_paths(names),
                  **_admin_paths()},
        "components": _components(names),
    }
