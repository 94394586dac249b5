"""The supervisor's part in changes while it runs: reloads, recycles and a reloaded configuration.

Mixed into :class:`~.supervisor.Supervisor`, whose table, lock and state changes these use; the
reloads themselves are driven by :class:`~.reload.Reloader` from the supervisor's main loop.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from ...config import EndpointConfig
from .handle import FAILED, READY, STOPPED, STOPPING, ChildHandle
from .reload import Reload

if TYPE_CHECKING:
    from .supervisor import Supervisor

    _Base = Supervisor
else:
    _Base = object


class ChangesMixin(_Base):
    def request_reload(self, name: str, endpoint: EndpointConfig) -> Reload:
        """Replace ``name``'s servers by a new generation with ``endpoint`` (any thread); the main
        loop does it. Raises KeyError when ``name`` has no started server."""
        with self._lock:
            if not self.replicas_of(name) or endpoint.is_support:
                raise KeyError(name)
            return self.reloader.request(name, endpoint)

    def reload_and_wait(self, name: str, endpoint: EndpointConfig) -> dict[str, Any]:
        """:meth:`request_reload`, then wait for it: as long as each replica may take to start and
        for its predecessor's requests to finish. The reload as ``/reload_server`` answers it."""
        reload = self.request_reload(name, endpoint)
        wait = (self.config.startup_timeout + endpoint.request_timeout + 10) * endpoint.nr_replicas
        if not reload.done.wait(wait):
            return {**reload.to_json(), "ERROR": f"still in progress after {wait:.0f}s"}
        return reload.to_json()

    def wait_started(self, names: list[str]) -> list[str]:
        """Wait until every replica of ``names`` is READY, as long as one may take to start; the
        names that are not READY by then, or that can no longer become READY without being asked
        (a replica FAILED, stopping or stopped, or the endpoint gone)."""
        deadline = time.monotonic() + self.config.startup_timeout + 10
        while True:
            with self._lock:
                states = {name: [h.state for h in self.replicas_of(name)] for name in names}
            waiting = [name for name, got in states.items() if not got or any(s is not READY for s in got)]
            hopeless = [name for name in waiting
                        if not states[name] or any(s in (FAILED, STOPPING, STOPPED) for s in states[name])]
            if len(hopeless) == len(waiting) or time.monotonic() > deadline:
                return waiting
            time.sleep(0.05)

    def reload_refused(self, name: str, error: str) -> Reload:
        """A reload that could not begin (the new configuration or file does not read): reported
        as one that failed; nothing changes."""
        with self._lock:
            reload = self.reloader.refused(name, error)
        self._flush()
        return reload

    def endpoint_changed(self, endpoint: EndpointConfig) -> None:
        """A new configuration entry is in force for one endpoint (under the lock)."""
        self.config = dataclasses.replace(self.config, endpoints=tuple(
            endpoint if e.name == endpoint.name else e for e in self.config.endpoints))
        self.table.publish_local(self.config.endpoints, list(self.handles.values()))

    def _release(self, handle: ChildHandle) -> None:
        """An old generation (or a new one that failed) has exited: free what it held."""
        if handle.proc is not None and handle.proc.stdin is not None:
            handle.proc.stdin.close()
        if handle.http is not None:
            handle.http.close()
            handle.http = None
        if handle.port_key or handle.generation == 1:
            self.ports.release(handle.port_key or handle.name)
        code = handle.proc.returncode if handle.proc is not None else None
        handle.exit_code = code
        self._transition(handle, STOPPED, f"generation {handle.generation} stopped, exit code {code}")

    def remove_endpoints(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """Endpoints gone from the configuration: out of the route table at once (404 for new
        requests), then each server is stopped once it holds no request (those it was sent are
        answered), and its port is freed."""
        if not names:
            return {}
        with self._lock:
            for name in names:
                self.reloader.drop(name)  # a reload or recycle under way must not bring it back
            handles = [h for h in self.handles.values() if h.endpoint.name in names]
            for handle in handles:
                del self.handles[handle.name]
            self.table.publish_local(self.config.endpoints, list(self.handles.values()))
        deadline = time.monotonic() + max(h.endpoint.request_timeout for h in handles) + 5 if handles else 0
        while any(h.inflight.count for h in handles) and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped = self._stop_handles(handles, self.config.shutdown_grace)
        for handle in handles:
            self.ports.release(handle.port_key or handle.name)
        return stopped

    def endpoint_entry(self, endpoint: EndpointConfig) -> None:
        """Put a new entry in force for one configured endpoint (what its next start uses)."""
        with self._lock:
            self.endpoint_changed(endpoint)

    def set_endpoints(self, endpoints: tuple[EndpointConfig, ...]) -> None:
        """The configured endpoints from now on (a reloaded configuration)."""
        with self._lock:
            self.config = dataclasses.replace(self.config, endpoints=endpoints)
            self.table.publish_local(self.config.endpoints, list(self.handles.values()))
