"""Reloading the configuration (``POST /reload_config``, SIGHUP): what changed, and acting on it.

:func:`plan` compares the configuration in force with the one just read: endpoints added,
removed, changed (their entry, or the content of their endpoint file, compared by hash) and
unchanged; gateway-level keys that differ cannot change while the gateway runs and are reported
as needing a restart. :func:`apply` then starts the added endpoints, stops the removed ones
(they are out of the route table at once, so new requests get 404, and their servers finish
what they hold before stopping), replaces the changed ones blue-green (:mod:`.supervision.reload`)
and leaves the others alone (same processes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import EndpointConfig, GatewayConfig

if TYPE_CHECKING:
    from .core import FlaskGateway

logger = logging.getLogger(__name__)


def code_hash(endpoint: EndpointConfig) -> str:
    """The hash of the endpoint's file as it is on disk ("" when it has none or it cannot be read)."""
    path: Path | None = endpoint.worker.module_file if endpoint.worker is not None else endpoint.script
    if path is None:
        return ""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


@dataclass
class Plan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)  # gateway-level keys that differ

    def to_json(self) -> dict[str, Any]:
        return {"ADDED": self.added, "REMOVED": self.removed, "CHANGED": self.changed,
                "UNCHANGED": self.unchanged, "NEEDS_RESTART": self.needs_restart}


def plan(old: GatewayConfig, new: GatewayConfig, running_hashes: dict[str, str]) -> Plan:
    """What to do to go from ``old`` to ``new``; ``running_hashes``: endpoint name -> hash of the
    file its running servers were started from."""
    result = Plan()
    for item in dataclasses.fields(GatewayConfig):
        if item.name not in ("endpoints", "raw") and getattr(old, item.name) != getattr(new, item.name):
            result.needs_restart.append(item.name.upper())
    before = {e.name: e for e in old.endpoints}
    after = {e.name: e for e in new.endpoints}
    for name, endpoint in after.items():
        previous = before.get(name)
        if previous is None:
            result.added.append(name)
        elif previous != endpoint or (name in running_hashes and running_hashes[name] != code_hash(endpoint)):
            result.changed.append(name)
        else:
            result.unchanged.append(name)
    result.removed = [name for name in before if name not in after]
    return result


def apply(gateway: FlaskGateway, new: GatewayConfig) -> dict[str, Any]:
    """Put ``new``'s endpoints in force (a route thread; waits for the reloads)."""
    supervisor = gateway.supervisor
    running = {h.endpoint.name: h.code_hash for h in supervisor.handles.values()
               if h.replica == 0 and h.pid is not None}
    todo = plan(supervisor.config, new, running)
    if todo.needs_restart:
        logger.warning("reload_config: %s cannot change while the gateway runs: restart it for them",
                       ", ".join(todo.needs_restart))
    after = {e.name: e for e in new.endpoints}
    # Remote endpoints first: added and changed ones are resolved and probed now (one coming back
    # to local children is served remotely until those children are READY), and an endpoint moving
    # to remote servers keeps its children until one of those servers is READY.
    before = {e.name: e for e in supervisor.config.endpoints}
    gateway.remote.configure([before[e.name] if e.name in before and before[e.name].is_remote and not e.is_remote
                              else e for e in new.endpoints])
    gateway.remote.wait_ready([n for n in todo.changed if after[n].is_remote and n in running], timeout=10)
    stopped = supervisor.remove_endpoints(todo.removed)
    supervisor.set_endpoints(tuple(e for e in supervisor.config.endpoints if e.name not in todo.removed)
                             + tuple(after[name] for name in todo.added))
    started = []
    for name in todo.added:
        if not after[name].disabled and not after[name].is_remote:
            supervisor.request_start(name)
            started.append(name)
    reloads = []
    for name in todo.changed:
        endpoint = after[name]
        before = supervisor.config.endpoint(name)
        if endpoint.is_remote and name in running:  # served elsewhere from now on: its children stop
            stopped.update(supervisor.remove_endpoints([name]))
            supervisor.set_endpoints(tuple(endpoint if e.name == name else e for e in supervisor.config.endpoints))
        elif name in running and not endpoint.disabled:
            reloads.append(supervisor.reload_and_wait(name, endpoint))
        else:  # not running: the new entry is what a later start uses
            supervisor.set_endpoints(tuple(endpoint if e.name == name else e for e in supervisor.config.endpoints))
            if before is not None and before.is_remote and not endpoint.is_remote and not endpoint.disabled:
                supervisor.request_start(name)  # served here again
                started.append(name)
    coming_back = [name for name in started if name in todo.changed]
    if coming_back:  # served by their remote servers until their children here are READY
        late = supervisor.wait_started(coming_back)
        if late:
            logger.warning("reload_config: %s not READY here yet; their remote servers are no longer used",
                           ", ".join(late))
    gateway.config = dataclasses.replace(gateway.config, endpoints=supervisor.config.endpoints)
    gateway.remote.configure(gateway.config.endpoints)
    logger.info("reload_config: added %s, removed %s, changed %s, unchanged %s", todo.added or "-",
                todo.removed or "-", todo.changed or "-", len(todo.unchanged))
    return {**todo.to_json(), "STARTED": started, "STOPPED": stopped, "RELOADS": reloads}
