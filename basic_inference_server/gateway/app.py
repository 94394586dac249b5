"""The gateway's HTTP routes (Flask): status, notifications, admin and support-metric routes.

``POST /run`` itself is answered in the HTTP front's event loop (:mod:`.routing.runpath`); routing
lives in :class:`~.routing.router.Router`. Admin routes need the token. The app is given its
collaborators (:class:`GatewayParts`); what it shows of them is :mod:`.observe.views`'.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from flask import Flask, Response, request

from .. import jsonutil
from ..config import ConfigError, GatewayConfig
from ..errors import (
    BadRequest,
    Conflict,
    Unauthorized,
    Unavailable,
    UnknownSignature,
    error_body,
)
from ..lib_ver import LIB_VER
from ..states import ReloadState
from ..transport.gather import Pieces
from ..transport.sysshm import FILE_NAME as SHM_FILE
from ..transport.sysshm import Registry
from ..webutil import (
    ROUTE_BODY_LIMIT,
    install_error_handlers,
    is_admin_token,
    json_response,
    presented_token,
    raw_json_response,
    read_json_object,
    require_admin,
)
from .apikeys import ApiKeys
from .auth import AdminToken
from .observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .observe.metrics import GatewayMetrics
from .observe.openapi import openapi_document
from .observe.views import Children, events
from .openairoutes import install_openai_routes
from .reconfigure import Reconfiguration
from .remote.pool import RemoteEndpoints
from .routing.envelope import Envelope
from .routing.forward import Reply, forward
from .routing.router import Router
from .supervision.handle import READY, STOPPED, ChildHandle
from .supervision.history import StateHistory
from .supervision.ports import PortsExhausted
from .supervision.supervisor import Supervisor
from .support_data import SupportData, metrics_of
from .v2routes import install_v2_routes
from .v2shm import EXTENSION, install_v2_shm_routes

SHUTDOWN_COMMAND = "SAFE_KILL_SERVER_CMD"
DASHBOARD_EVENTS = 50  # the newest history events the dashboard shows
# The dashboard is one self-contained page: its inline script and style, and fetches to this gateway only.
DASHBOARD_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                 "img-src 'self' data:; connect-src 'self'")


def is_loopback(address: str | None) -> bool:
    if address == "localhost":
        return True
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GatewayParts:
    """What the gateway's routes work with."""

    config: Callable[[], GatewayConfig]  # the configuration in force (it changes with reloads)
    host: str  # where the gateway listens (support processes post from there)
    execution_path: str  # the run route (/run)
    admin: AdminToken
    envelope: Envelope
    router: Router
    supervisor: Supervisor
    remote: RemoteEndpoints
    reconfiguration: Reconfiguration
    metrics: GatewayMetrics
    history: StateHistory
    support_data: SupportData
    system_status: Callable[[], dict[str, Any]]  # the body of /system_status
    support_status: Callable[[], dict[str, Any]]  # the support processes' latest data
    not_ready: Callable[[], dict[str, str]]  # what keeps the gateway from being ready
    request_stop: Callable[[], None]  # stop the gateway (after the answer to /shutdown)
    jobs_queue: Callable[[], dict[str, Any]] = dict  # per endpoint: jobs queued, running, oldest's age, ended
    keys: ApiKeys = field(default_factory=ApiKeys)  # BIS_API_KEYS_FILE (off without it)


def create_gateway_app(gw: GatewayParts) -> Flask:
    app = Flask("bis-gateway", static_folder=None)  # serve no files from the working folder
    install_error_handlers(app, plain_under="/v2", openai_under="/v1/")
    config = gw.config()
    limit = min(config.max_body_bytes, ROUTE_BODY_LIMIT)  # (gateway-level keys never change while it runs)
    json_limits = config.json_limits
    supervisor = gw.supervisor
    envelope = gw.envelope
    admin_token = gw.admin.value

    def read_payload() -> dict[str, Any]:
        if request.method == "GET":
            return dict(request.args)
        if not request.content_length and request.headers.get("Transfer-Encoding") is None:
            return {}
        return read_json_object(request, limit, json_limits)

    def admin_payload() -> dict[str, Any]:
        """The body of an admin route, once its token is checked. A body that cannot be read holds
        no token: without one in the Authorization header, that is a 401, before anything about it."""
        try:
            payload = read_payload()
        except BadRequest as exc:
            if presented_token(request, None) is None:
                raise Unauthorized("admin token required: send 'Authorization: Bearer <token>' or \"TOKEN\" in "
                                   f"a JSON body (this one cannot be read: {exc.message}; the token is "
                                   f"{gw.admin.where})") from None
            require_admin(admin_token, request, None, gw.admin.where)
            raise
        require_admin(admin_token, request, payload, gw.admin.where)
        return payload

    router = gw.router
    signature_of, route_to = router.signature_of, router.route_to

    def relay(reply: Reply) -> Response:
        status, body, headers = router.relay(reply.status, reply.data, reply.retry_after)
        return raw_json_response(body.joined() if isinstance(body, Pieces) else body, status, headers)

    def status_response() -> Response:
        return json_response(envelope.add_to(gw.system_status()))

    @app.route("/notifications", methods=["GET", "POST"])
    def notifications() -> Response:
        # PROTECT_NOTIFICATIONS: what endpoint code wrote is not for anyone
        payload = admin_payload() if config.protect_notifications else read_payload()
        signature = signature_of(payload)
        if gw.keys.on and not is_admin_token(admin_token, presented_token(request, payload)):  # (or the admin)
            gw.keys.check(request.headers, signature)
        merged: dict[str, list[Any]] = {}
        for handle in ready_replicas(signature):
            with router.admission.forwarding(handle):
                reply = forward(handle, "/notifications", b"{}")
            if reply.status != 200:
                return relay(reply)
            for key, items in json.loads(reply.data).items():
                merged.setdefault(key, []).extend(items if isinstance(items, list) else [items])
        return json_response(envelope.add_to(merged))

    def ready_replicas(signature: str) -> list[ChildHandle]:
        """Every READY replica of ``signature`` (at least one, else route_to's 404/503)."""
        first = route_to(signature)
        replicas = router.table.routes.servers.get(signature, ())
        return [first] + [h for h in replicas if h is not first and h.state == READY]

    @app.route("/update_workers", methods=["POST"])
    def update_workers() -> Response:
        payload = admin_payload()
        count = payload.get("NR_WORKERS")
        body = jsonutil.dumps_bytes({"NR_WORKERS": count})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {admin_token}"}
        for handle in ready_replicas(signature_of(payload)):
            reply = forward(handle, "/update_workers", body, headers)
            if reply.status != 200:
                break
            handle.nr_workers = count  # a restart of this server keeps the new size
        return relay(reply)

    def children() -> Children:
        routes = router.table.routes
        children = routes.children
        return Children([h for h in children if not h.is_support], [h for h in children if h.is_support],
                        list(routes.remote), {name: r.to_json() for name, r in supervisor.reloader.last.items()},
                        routes.recycles, router.table.pipelines)

    @app.route("/list_servers", methods=["GET", "POST"])
    def list_servers() -> Response:
        return json_response(envelope.add_to(children().view()))

    @app.route("/system_status", methods=["GET", "POST"])
    def system_status_route() -> Response:
        return status_response()

    @app.route("/start_server", methods=["POST"])
    def start_server() -> Response:
        payload = admin_payload()
        signature = signature_of(payload)
        endpoint = gw.config().endpoint(signature)
        if endpoint is None:
            raise UnknownSignature(f"{signature!r} is not an endpoint of the configuration")
        if endpoint.is_remote:
            raise Conflict(f"{signature!r} is served by the model servers at its URLS; start them where they run")
        if endpoint.worker is None and endpoint.script is None:
            raise BadRequest(f"{signature!r} has no endpoint file or worker class (see the gateway log)")
        try:
            handle = supervisor.request_start(signature)
        except PortsExhausted as exc:
            raise Unavailable(str(exc), retry_after=30) from None
        return json_response({"MESSAGE": f"OK. Starting {signature}", "STATE": handle.state,
                              "PORT": handle.port}, 202)

    @app.route("/reload_server", methods=["POST"])
    def reload_server() -> Response:
        payload = admin_payload()
        signature = signature_of(payload)
        try:
            reloads = gw.reconfiguration.reload_servers(signature)
        except ConfigError as exc:
            raise BadRequest(f"the configuration cannot be read, nothing was reloaded: {exc}") from None
        except KeyError:
            raise UnknownSignature(f"{signature!r} is not a started endpoint of the configuration; "
                                   f"started: {sorted(h.endpoint.name for h in supervisor.servers())}") from None
        answers = [reload.to_json() for reload in reloads]
        failed = [reload for reload in reloads if reload.state is not ReloadState.DONE]
        if failed:
            message = "; ".join(f"{r.name}: {r.to_json()['ERROR']}" for r in failed)
            body = error_body("ReloadFailed", f"reload failed, the previous generation goes on serving: {message}")
            return json_response({**body, "RELOADS": answers}, 422)
        return json_response({"MESSAGE": f"OK. Reloaded {', '.join(r.name for r in reloads)}", "RELOADS": answers})

    @app.route("/reload_config", methods=["POST"])
    def reload_config() -> Response:
        admin_payload()
        try:
            result = gw.reconfiguration.reload_config()
        except ConfigError as exc:
            raise BadRequest(f"the configuration does not read, nothing changed: {exc}") from None
        failed = list(result["FAILED"]) + [r["SIGNATURE"] for r in result["RELOADS"]
                                           if ReloadState.read(r["STATE"]) is ReloadState.FAILED]
        message = (f"Configuration reloaded; FAILED (see FAILED and RELOADS): {', '.join(failed)}" if failed
                   else "OK. Configuration reloaded")
        return json_response({"MESSAGE": message, **result})

    @app.route("/kill_server", methods=["POST"])
    def kill_server() -> Response:
        payload = admin_payload()
        signature = signature_of(payload)
        if signature == "*":
            names = [n for n, h in supervisor.handles.items() if h.state != STOPPED or h.pid is not None]
        elif supervisor.replicas_of(signature):
            names = [h.name for h in supervisor.replicas_of(signature)]
        elif signature in supervisor.handles:  # one replica, by its key ("name#2")
            names = [signature]
        else:
            raise UnknownSignature(f"Bad signature {signature!r}. Available signatures: {sorted(supervisor.handles)}")
        killed = supervisor.stop_many(names)
        return json_response({"MESSAGE": f"OK. Stopped {len(killed)} server(s)", "KILLED": killed})

    @app.route("/shutdown", methods=["POST"])
    def shutdown() -> Response:
        payload = admin_payload()
        signature = signature_of(payload)
        if signature.upper() != SHUTDOWN_COMMAND:
            raise BadRequest(f"/shutdown needs SIGNATURE={SHUTDOWN_COMMAND!r}")
        response = json_response(envelope.add_to({"MESSAGE": "OK. Shutting down: draining requests, "
                                                  "stopping servers"}))
        # Stop only once this answer has been handed to the server for sending.
        response.call_on_close(gw.request_stop)
        return response

    @app.route("/support_update_status", methods=["POST"])
    def support_update_status() -> Response:
        payload = read_json_object(request, limit, json_limits)
        if not is_loopback(request.remote_addr) and request.remote_addr != gw.host:
            require_admin(admin_token, request, payload, gw.admin.where)
        signature = signature_of(payload)
        endpoint = gw.config().endpoint(signature)
        if endpoint is None or not endpoint.is_support:
            raise UnknownSignature(f"{signature!r} is not a support process of the configuration")
        gw.support_data.store(signature, metrics_of(payload))
        return json_response({"MESSAGE": "OK."})

    @app.route("/metrics", methods=["GET"])
    def metrics() -> Response:
        return Response(gw.metrics.render(), mimetype=None, content_type=METRICS_CONTENT_TYPE)

    @app.route("/dashboard/data", methods=["GET"])
    def dashboard_data() -> Response:
        now = children()
        return json_response(envelope.add_to({
            **now.view(),
            "SUPPORT_DATA": gw.support_status(),
            "MEMORY_MB": now.memory(),
            "REQUESTS": gw.metrics.requests_by_signature(),
            # (the event loop's thread alone updates the counts: a copy of them is enough, without a lock)
            "ACTIVE_STREAMS": now.active_streams(dict(list(gw.metrics.active_streams.items()))),
            "SERIES": gw.metrics.activity.series(),
            "EVENTS": events(gw.history.snapshot(), DASHBOARD_EVENTS),
            "JOBS": gw.jobs_queue(),
        }))

    dashboard_page = resources.files(f"{__package__}.observe").joinpath("dashboard.html").read_text(encoding="utf-8")

    @app.route("/dashboard", methods=["GET"])
    def dashboard() -> Response:
        return Response(dashboard_page, content_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-cache"})

    @app.route("/openapi.json", methods=["GET"])
    def openapi() -> Response:
        return json_response(openapi_document([h.name for h in supervisor.servers()], LIB_VER,
                                              run_path=gw.execution_path))

    @app.route("/health", methods=["GET"])
    def health() -> Response:
        return json_response(envelope.add_to({"status": "ok"}))

    @app.route("/ready", methods=["GET"])
    def ready() -> Response:
        waiting = gw.not_ready()
        if router.admission.draining:
            raise Unavailable("gateway is shutting down")
        if waiting:
            listed = ", ".join(f"{n} ({s})" for n, s in waiting.items())
            body = {**error_body("NotReady", f"not ready: {listed}"), "NOT_READY": waiting}
            return json_response(body, 503, {"Retry-After": "1"})
        return json_response({"status": "ready", "servers": len(supervisor.handles)})

    shm = Registry(supervisor.run_folder / SHM_FILE) if config.allow_client_shm else None
    install_v2_shm_routes(app, shm, is_loopback, gw.keys)
    install_v2_routes(app, router, gw.not_ready, [EXTENSION] if shm is not None else [], gw.keys)
    install_openai_routes(app, router, gw.keys)
    return app
