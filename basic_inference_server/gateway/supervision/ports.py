"""Port allocation for model servers: a fixed range (default 5003-5010), busy ports skipped."""

from __future__ import annotations

import logging
import socket
import threading

logger = logging.getLogger(__name__)


class PortsExhausted(Exception):
    """No free port is left in the configured range."""


def port_is_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound now (with SO_REUSEADDR, as waitress binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Gives each server name a port of ``first..last`` and keeps it for its restarts."""

    def __init__(self, first: int, last: int):
        self.first = first
        self.last = last
        self._by_name: dict[str, int] = {}
        self._lock = threading.Lock()

    def port_of(self, name: str) -> int | None:
        return self._by_name.get(name)

    def allocate(self, name: str, host: str, avoid: int | None = None) -> int:
        """The port of ``name``; a new free one if it has none (or ``avoid`` was found busy)."""
        with self._lock:
            current = self._by_name.get(name)
            if current is not None and current != avoid:
                return current
            taken = {p for n, p in self._by_name.items() if n != name}
            for port in range(self.first, self.last + 1):
                if port in taken or port == avoid:
                    continue
                if port_is_free(host, port):
                    self._by_name[name] = port
                    return port
                logger.warning("Port %d is busy (used by another program): skipped", port)
            raise PortsExhausted(
                f"no free port left for {name!r} in {self.first}-{self.last} "
                f"({len(taken)} used by other servers); widen the range with "
                "--first_server_port/--last_server_port or FIRST_SERVER_PORT/LAST_SERVER_PORT"
            )

    def release(self, name: str) -> None:
        """``name`` no longer needs its port (an old generation that stopped)."""
        with self._lock:
            self._by_name.pop(name, None)
