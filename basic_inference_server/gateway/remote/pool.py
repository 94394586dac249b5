"""The remote endpoints of a gateway: where their model servers are, and which of them can serve.

For each endpoint with ``URLS``, every ``RESOLVE_INTERVAL`` the host names are resolved again (a
name may return several addresses: every replica of a Docker Swarm service as
``tasks.<service>``, or of a Kubernetes headless Service), new addresses are added as PROBING and
addresses no longer returned leave the table (their requests in flight still finish). Every
``PROBE_INTERVAL`` each address's ``/health`` is probed: READY when it answers READY, DRAINING when
it says it is shutting down, DOWN after ``PROBE_FAILURES`` failed probes in a row. A request that
could not reach an address (refused, connection lost) takes it out at once
(:meth:`RemoteEndpoints.report`, from the event loop); a probe brings it back. The router sends
requests only to READY addresses. Resolving and probing run on a thread each (every lookup on a
thread of its own, the probes on a small pool), never in the event loop, and publish each change
into the route table: a slow DNS server delays neither the probes nor the other host names, and a
lookup that takes longer than ``RESOLVE_TIMEOUT`` counts as failed for that round (the addresses
that URL had are kept).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from ...config import EndpointConfig
from ...states import ServerHealth
from ...tlsfiles import client_context
from ..routing.routes import RouteTable
from ..routing.upstream import Upstream
from .handle import RemoteHandle, RemoteState

logger = logging.getLogger(__name__)

RESOLVE_INTERVAL = 2.0
PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 1.0
PROBE_FAILURES = 2
RESOLVE_TIMEOUT = 2.0


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` has (IPv4 ones when it has any: ``localhost`` is one server, not two)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v4 = sorted({info[4][0] for info in found if info[0] == socket.AF_INET})
    return v4 or sorted({info[4][0] for info in found})


def _start_lookup(url: tuple[str, int]) -> Future:
    """``resolve(host, port)`` on a new thread (a resolver that hangs holds only that one)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(resolve(*url))
        except Exception as exc:  # noqa: BLE001 - handed to the round that reads it
            future.set_exception(exc)

    threading.Thread(target=run, name="remote-resolve", daemon=True).start()
    return future


class RemoteEndpoints:
    """Resolves, probes and publishes the addresses of the endpoints that have ``URLS``."""

    def __init__(self, endpoints: Iterable[EndpointConfig], table: RouteTable):
        self.table = table
        self.endpoints = {e.name: e for e in endpoints if e.is_remote and not e.disabled}
        self.addresses: dict[str, dict[tuple[str, int], RemoteHandle]] = {name: {} for name in self.endpoints}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="remote-probe")
        self._looking_up: dict[tuple[str, int], Future] = {}  # lookups still running from a past round
        self._resolve_errors: dict[str, str] = {}  # URL -> the last error, logged once
        self._probing: set[RemoteHandle] = set()  # addresses whose probe is still running
        self._resolving = threading.Lock()  # one resolve_all at a time (the loop's, a reload's)
        self.tls: ssl.SSLContext | None = None  # how https:// servers are checked (made when first needed)
        self.token: str | None = None  # BIS_ENDPOINT_TOKEN, sent to them on every route (set before start)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.endpoints and not self._threads:
            self._threads = [threading.Thread(target=self._every, args=(RESOLVE_INTERVAL, self.resolve_all),
                                              name="remote-resolving", daemon=True),
                             threading.Thread(target=self._every, args=(PROBE_INTERVAL, self.probe_all),
                                              name="remote-probing", daemon=True)]
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(RESOLVE_TIMEOUT + PROBE_TIMEOUT + 2)
        self._probes.shutdown(wait=False, cancel_futures=True)

    def configure(self, endpoints: Iterable[EndpointConfig]) -> None:
        """A reloaded configuration: remote endpoints added, changed (their addresses are resolved
        again at once; requests in flight finish) or removed (out of the route table at once). An
        endpoint whose URLS change between http:// and https:// starts again from new addresses."""
        wanted = {e.name: e for e in endpoints if e.is_remote and not e.disabled}
        dropped = []
        with self._lock:
            for name, table in list(self.addresses.items()):
                if name not in wanted or any(h.endpoint.tls != wanted[name].tls for h in table.values()):
                    dropped.extend(self.addresses.pop(name).values())
            for name, endpoint in wanted.items():
                self.addresses.setdefault(name, {})
                for handle in self.addresses[name].values():
                    handle.endpoint = endpoint
            self.endpoints = wanted
        for handle in dropped:
            if handle.http is not None:
                handle.http.close()
        self.resolve_all(publish=True)
        self.start()

    def _every(self, interval: float, step) -> None:
        while not self._stop.is_set():
            try:
                step()
            except Exception:  # the next round tries again; nothing must end this thread
                logger.exception("remote endpoints: %s failed", step.__name__)
            self._stop.wait(interval)

    # -- reading (any thread) ----------------------------------------------------------------
    def handles(self) -> list[RemoteHandle]:
        with self._lock:
            return [h for table in self.addresses.values() for h in table.values()]

    def not_ready(self) -> dict[str, str]:
        """Remote endpoints without a READY address: name -> why."""
        with self._lock:
            return {name: "no READY address" for name, table in self.addresses.items()
                    if not any(h.routable for h in table.values())}

    def wait_ready(self, names: list[str], timeout: float) -> bool:
        """Wait until each endpoint of ``names`` has a READY address (False after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while any(name in self.not_ready() for name in names):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- the one place that changes an address's state ---------------------------------------
    def _transition(self, handle: RemoteHandle, state: RemoteState, why: str | None) -> None:
        with self._lock:
            previous = handle.state
            handle.error = why if state is not RemoteState.READY else None
            if previous is state:
                return
            handle.state, handle.since = state, time.monotonic()
        level = logging.INFO if state in (RemoteState.READY, RemoteState.DRAINING) else logging.WARNING
        logger.log(level, "%s: %s -> %s%s", handle.name, previous, state, f" ({why})" if why else "")

    def report(self, handle: RemoteHandle, why: str, draining: bool) -> None:
        """A request could not be served by ``handle`` (event loop): route no more to it until a
        probe finds it READY again."""
        handle.failed += 1
        self._transition(handle, RemoteState.DRAINING if draining else RemoteState.DOWN, why)

    # -- resolving ---------------------------------------------------------------------------
    def resolve_all(self, publish: bool = False) -> None:
        with self._resolving:
            changed = publish
            endpoints = list(self.endpoints.items())
            looked_up = self._look_up({url for _, endpoint in endpoints for url in endpoint.urls})
            for name, endpoint in endpoints:
                found: dict[tuple[str, int], str] = {}
                unresolved: set[str] = set()  # URLs whose addresses are kept while their DNS fails
                for host, port in endpoint.urls:
                    source = endpoint.url_of(host, port)
                    try:
                        addresses = looked_up[(host, port)].result()
                    except (OSError, ValueError) as exc:  # ValueError: a name IDNA cannot encode
                        unresolved.add(source)
                        if self._resolve_errors.get(source) != str(exc):
                            self._resolve_errors[source] = str(exc)
                            logger.warning("%s: cannot resolve %s: %s", name, source, exc)
                        continue
                    self._resolve_errors.pop(source, None)
                    for address in addresses:
                        found.setdefault((address, port), source)
                changed |= self._update(endpoint, found, unresolved)
            if changed:
                with self._lock:
                    snapshot = {name: tuple(table.values()) for name, table in self.addresses.items()}
                self.table.publish_remote(snapshot)

    def _tls(self) -> ssl.SSLContext:
        if self.tls is None:
            self.tls = client_context()  # the gateway checked BIS_TLS_CA_FILE when it started
        return self.tls

    def _look_up(self, urls: set[tuple[str, int]]) -> dict[tuple[str, int], Future]:
        """Every host name looked up at once, each on a thread of its own and within
        RESOLVE_TIMEOUT: a lookup not done by then fails this round (TimeoutError) and is waited
        for again by the next one (so one name has at most one lookup running)."""
        futures = {url: self._looking_up.pop(url, None) or _start_lookup(url) for url in urls}
        self._looking_up.clear()  # what is left there: lookups of URLs no longer configured
        deadline = time.monotonic() + RESOLVE_TIMEOUT
        pending = set(futures.values())
        while pending and not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            pending = wait(pending, timeout=min(left, 0.1)).not_done  # in slices: a stop ends the wait
        for url, future in list(futures.items()):
            if not future.done():
                self._looking_up[url] = future
                futures[url] = late = Future()
                late.set_exception(TimeoutError(f"no answer from DNS within {RESOLVE_TIMEOUT:g}s"))
        return futures

    def _update(self, endpoint: EndpointConfig, found: dict[tuple[str, int], str], unresolved: set[str]) -> bool:
        """Add the new addresses, drop the ones DNS no longer returns (not those of a URL whose
        DNS fails just now)."""
        with self._lock:
            table = self.addresses.get(endpoint.name)
            if table is None or self.endpoints.get(endpoint.name) is not endpoint:  # a reload came meanwhile
                return False
            added = [key for key in found if key not in table]
            gone = [key for key, handle in table.items() if key not in found and handle.source not in unresolved]
            for host, port in added:
                handle = table[(host, port)] = RemoteHandle(
                    endpoint=endpoint, host=host, port=port, source=found[(host, port)], since=time.monotonic(),
                    tls=self._tls() if endpoint.tls else None, report=self.report)
                handle.http = Upstream(host, port, maxsize=2, connect_timeout=PROBE_TIMEOUT,
                                       tls=handle.tls, server_name=handle.server_name, token=self.token)
            removed = [table.pop(key) for key in gone]
        for handle in removed:
            logger.info("%s: no longer an address of %s", handle.name, handle.source)
            if handle.http is not None:
                handle.http.close()
        for key in added:
            logger.info("%s: found at %s", table[key].name, table[key].source)
        return bool(added or removed)

    # -- probing -----------------------------------------------------------------------------
    def probe_all(self) -> None:
        """Probe every address whose last probe has finished (one slow address holds back only itself)."""
        futures = []
        for handle in self.handles():
            if handle not in self._probing:
                self._probing.add(handle)
                futures.append(self._probes.submit(self._probe, handle))
        if futures:
            wait(futures, timeout=PROBE_TIMEOUT + 1)

    def _probe(self, handle: RemoteHandle) -> None:
        try:
            self._probe_once(handle)
        finally:
            self._probing.discard(handle)

    def _probe_once(self, handle: RemoteHandle) -> None:
        try:
            reply = handle.http.request("GET", "/health", timeout=PROBE_TIMEOUT)  # type: ignore[union-attr]
            body = json.loads(reply.data) if reply.data.startswith(b"{") else {}
        except (OSError, ValueError) as exc:
            self._probe_failed(handle, f"/health: {exc}")
            return
        if not isinstance(body, dict):
            body = {}
        status, served = ServerHealth.read(body.get("status")), body.get("name")
        if served != handle.endpoint.name:  # another endpoint's server (a wrong URL, a reused address)
            self._probe_failed(handle, f"{handle.address} serves {served!r}, not {handle.endpoint.name!r}", now=True)
            return
        if isinstance(body.get("workers"), dict):
            handle.workers = body["workers"]
        if reply.status == 200 and status is ServerHealth.READY:
            handle.health_failures = 0
            self._transition(handle, RemoteState.READY, None)
        elif status is ServerHealth.DRAINING:
            handle.health_failures = 0
            self._transition(handle, RemoteState.DRAINING, "shutting down")
        else:
            self._probe_failed(handle, f"/health answered {reply.status} {status.name if status else ''}".rstrip())

    def _probe_failed(self, handle: RemoteHandle, why: str, now: bool = False) -> None:
        handle.health_failures += 1
        if now or handle.health_failures >= PROBE_FAILURES or handle.state is not RemoteState.READY:
            self._transition(handle, RemoteState.DOWN, why)
