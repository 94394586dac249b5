"""Reloading the configuration (``POST /reload_config``, SIGHUP): what changed, and acting on it.

:func:`plan` compares the configuration in force with the one just read: endpoints added,
removed, changed (their entry, or the content of their endpoint file, compared by hash) and
unchanged; gateway-level keys that differ cannot change while the gateway runs and are reported
as needing a restart. :func:`apply` then starts the added endpoints, stops the removed ones
(they are out of the route table at once, so new requests get 404, and their servers finish
what they hold before stopping), replaces the changed ones blue-green (:mod:`.supervision.reload`)
starts again the FAILED ones whose file or entry changed, and leaves the others alone (same
processes). An endpoint whose file does not load (a syntax error, no worker class) is FAILED when
added and left FAILED when it was, and a running one is not reloaded: it goes on with the code it
runs (the answer's ``FAILED`` says why, for each).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import GatewayConfig
from .supervision.handle import ChildState

if TYPE_CHECKING:
    from .core import FlaskGateway

logger = logging.getLogger(__name__)


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
        elif previous != endpoint or (name in running_hashes and running_hashes[name] != endpoint.code_hash()):
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
    failed = {h.endpoint.name: h.code_hash for h in supervisor.handles.values()
              if h.replica == 0 and h.pid is None and h.state is ChildState.FAILED}
    todo = plan(supervisor.config, new, {**failed, **running})
    if todo.needs_restart:
        logger.warning("reload_config: %s cannot change while the gateway runs: restart it for them",
                       ", ".join(todo.needs_restart))
    old = {e.name: e for e in supervisor.config.endpoints}
    after = {e.name: e for e in new.endpoints}
    moving_out = [n for n in todo.changed if after[n].is_remote and n in running]  # children -> URLS
    moving_back = [n for n in todo.changed if old[n].is_remote and not after[n].is_remote
                   and not after[n].disabled]  # URLS -> children
    # Remote endpoints first: added and changed ones are resolved and probed now; one moving out
    # keeps its children until one of its remote servers is READY, one moving back is served by its
    # remote servers until its children here are READY.
    gateway.remote.configure([old[e.name] if e.name in moving_back else e for e in new.endpoints])
    gateway.remote.wait_ready(moving_out, timeout=10)
    stopped = supervisor.remove_endpoints(todo.removed)
    supervisor.set_endpoints(tuple(e for e in supervisor.config.endpoints if e.name not in todo.removed)
                             + tuple(after[name] for name in todo.added))
    unloadable = {name: e.problem for name, e in after.items() if e.problem and not e.disabled}
    started = []
    for name in todo.added:
        if name in unloadable:
            supervisor.unloadable(after[name])
        elif not after[name].disabled and not after[name].is_remote:
            supervisor.request_start(name)
            started.append(name)
    reloads = []
    for name in todo.changed:
        endpoint = after[name]
        if name in moving_out:  # served elsewhere from now on: its children stop
            stopped.update(supervisor.remove_endpoints([name]))
            supervisor.endpoint_entry(endpoint)
        elif name in running and name in unloadable:  # its servers go on with the code they run
            reloads.append(supervisor.reload_refused(name, f"CONFIG_ENDPOINTS.{name}: {endpoint.problem}").to_json())
        elif name in running and not endpoint.disabled:
            reloads.append(supervisor.reload_and_wait(name, endpoint))
        else:  # not running: the new entry is what a later start uses
            supervisor.endpoint_entry(endpoint)
            if name in failed and name in unloadable:
                supervisor.unloadable(endpoint)  # still FAILED, now for this reason
            elif name in moving_back or (name in failed and not endpoint.disabled and not endpoint.is_remote):
                # served here again, or FAILED with the file or entry now changed: tried again
                supervisor.request_start(name)
                started.append(name)
    late = supervisor.wait_started(moving_back)
    if late:
        logger.warning("reload_config: %s not READY here yet; their remote servers are no longer used",
                       ", ".join(late))
    gateway.config = dataclasses.replace(gateway.config, endpoints=supervisor.config.endpoints)
    gateway.remote.configure(gateway.config.endpoints)
    logger.info("reload_config: added %s, removed %s, changed %s, unchanged %s", todo.added or "-",
                todo.removed or "-", todo.changed or "-", len(todo.unchanged))
    return {**todo.to_json(), "STARTED": started, "STOPPED": stopped, "RELOADS": reloads,
            "FAILED": {name: problem for name, problem in unloadable.items() if name in todo.added + todo.changed}}
