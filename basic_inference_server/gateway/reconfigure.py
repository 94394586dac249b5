"""Changing what runs while the gateway runs (:class:`Reconfiguration`, the one owner of that flow):
``POST /reload_config`` and SIGHUP read the configuration again, ``POST /reload_server`` replaces an
endpoint's servers by a new generation of its file. The configuration in force is the
supervisor's table's (:class:`~.supervision.table.ChildTable`), changed only from here.

:func:`plan` compares the configuration in force with the one just read: endpoints added,
removed, changed (their entry, or the content of their endpoint file, compared by hash) and
unchanged; gateway-level keys that differ cannot change while the gateway runs and are reported
as needing a restart. :meth:`Reconfiguration.apply` then starts the added endpoints, stops the removed ones
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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, GatewayConfig
from ..errors import Conflict
from ..states import ReloadState
from .apikeys import ApiKeys
from .remote.pool import RemoteEndpoints
from .supervision.handle import ChildState
from .supervision.history import StateHistory
from .supervision.reload import Reload
from .supervision.supervisor import Supervisor

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


class Reconfiguration:
    """Reloads of the configuration and of endpoints, one configuration reload at a time.

    Args:
        read: reads the configuration again (None: it was given in code, there is no file).
        supervisor, remote: what runs the children and the remote endpoints.
        history: where reloads are recorded.
    """

    def __init__(self, read: Callable[[], GatewayConfig] | None, supervisor: Supervisor, remote: RemoteEndpoints,
                 history: StateHistory):
        self.read = read
        self.supervisor = supervisor
        self.remote = remote
        self.history = history
        self._reloading = threading.Lock()
        self._hup_waiting = threading.Event()  # a SIGHUP's reload waits for the one in progress
        self.keys: ApiKeys | None = None  # BIS_API_KEYS_FILE: read again with the configuration

    @property
    def config(self) -> GatewayConfig:
        """The configuration in force."""
        return self.supervisor.config

    # -- POST /reload_server ---------------------------------------------------------------------
    def reload_servers(self, signature: str) -> list[Reload]:
        """Replace the servers of ``signature`` (``"*"``: of every started endpoint, one after the
        other) by a new generation with the endpoint file as it is on disk and its entry as the
        configuration now says; wait for each. Raises ConfigError (the configuration or the file
        does not read: the servers running go on serving) or KeyError (not a started endpoint)."""
        supervisor = self.supervisor
        try:
            config = self.read() if self.read is not None else supervisor.config
        except ConfigError as exc:
            for name in self._reload_names(signature):
                supervisor.reload_refused(name, f"the configuration does not read: {exc}")
            raise
        results = []
        for name in self._reload_names(signature):
            endpoint = config.endpoint(name)
            if endpoint is None or endpoint.is_support:
                raise KeyError(name)
            if endpoint.problem:  # the file does not load: the servers running go on serving
                supervisor.reload_refused(name, endpoint.problem)
                raise ConfigError(f"CONFIG_ENDPOINTS.{name}: {endpoint.problem}")
            results.append(supervisor.reload_and_wait(name, endpoint))
            if results[-1].state is ReloadState.STARTING:
                break  # still in progress: the next ones would wait behind it
        return results

    def _reload_names(self, signature: str) -> list[str]:
        supervisor = self.supervisor
        if signature == "*":
            return [h.endpoint.name for h in supervisor.servers() if h.replica == 0 and h.pid is not None]
        if not supervisor.replicas_of(signature):
            raise KeyError(signature)
        return [signature]

    # -- POST /reload_config, SIGHUP ---------------------------------------------------------------
    def reload_config(self, wait: bool = False) -> dict[str, Any]:
        """Read the configuration again and put its endpoints in force. Raises ConfigError (nothing
        changes) when it does not read, and Conflict while another reload is in progress (``wait``:
        run after it instead)."""
        keys_error = self._reload_keys()  # whatever the configuration does
        if self.read is None:
            raise ConfigError("this gateway was given its configuration in code: there is no file to read again")
        if not self._reloading.acquire(blocking=wait):
            raise Conflict("a configuration reload is in progress (it waits for reloaded and moved endpoints "
                           "to be READY); send this one again when it has answered")
        self._hup_waiting.clear()  # this one reads the file as it is now: a later SIGHUP needs its own
        try:
            try:
                config = self.read()
            except ConfigError as exc:
                logger.error("reload_config: the configuration does not read, nothing changed: %s", exc)
                self.history.record("RELOAD_CONFIG_FAILED", detail=str(exc))
                raise
            result = self.apply(config)
        finally:
            self._reloading.release()
        if keys_error:
            result["API_KEYS_ERROR"] = keys_error
        self.history.record("RELOAD_CONFIG", detail=", ".join(
            f"{key.lower()} {value}" for key, value in result.items() if key in ("ADDED", "REMOVED", "CHANGED")))
        return result

    def _reload_keys(self) -> str | None:
        """Read the API keys file again; what is wrong with it (the keys in force stay), or None."""
        if self.keys is None:
            return None
        try:
            self.keys.reload()
        except ValueError as exc:
            logger.error("reload_config: %s; the API keys in force stay", exc)
            self.history.record("RELOAD_KEYS_FAILED", detail=str(exc))
            return str(exc)
        return None

    def reload_in_background(self) -> None:
        """SIGHUP: :meth:`reload_config` on a thread of its own, after the reload in progress."""
        if self._hup_waiting.is_set():
            return  # a reload for an earlier SIGHUP has not begun yet: it reads the file as it is now
        self._hup_waiting.set()

        def run() -> None:
            try:
                self.reload_config(wait=True)
            except ConfigError:
                pass  # logged and recorded
            except Exception:
                logger.exception("reload_config after SIGHUP failed")
        threading.Thread(target=run, name="reload-config", daemon=True).start()

    def apply(self, new: GatewayConfig) -> dict[str, Any]:
        """Put ``new``'s endpoints in force (a route thread; waits for the reloads)."""
        supervisor, remote = self.supervisor, self.remote
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
        supervisor.routes.publish_pipelines(new.pipelines)
        remote.configure([old[e.name] if e.name in moving_back else e for e in new.endpoints])
        remote.wait_ready(moving_out, timeout=10)
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
                reloads.append(supervisor.reload_refused(name, f"CONFIG_ENDPOINTS.{name}: {endpoint.problem}"))
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
        remote.configure(supervisor.config.endpoints)
        logger.info("reload_config: added %s, removed %s, changed %s, unchanged %s", todo.added or "-",
                    todo.removed or "-", todo.changed or "-", len(todo.unchanged))
        return {**todo.to_json(), "STARTED": started, "STOPPED": stopped, "RELOADS": [r.to_json() for r in reloads],
                "FAILED": {name: problem for name, problem in unloadable.items() if name in todo.added + todo.changed}}
