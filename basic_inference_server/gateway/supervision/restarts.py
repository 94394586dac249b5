"""What the supervisor's loop decides about one child at one moment (:class:`RestartPolicy`).

- A child that exits is restarted after a backoff: 1 s, doubling up to 30 s while it keeps
  failing, and from 1 s again once it has been READY for a minute.
- A model server that exits because its model cannot load (exit code 3), or with an unusable
  configuration (2), is FAILED and not restarted; one whose port was taken (4) tries another port.
- A server that is not READY within ``STARTUP_TIMEOUT`` is FAILED and stopped.
- A READY server whose health probes failed ``HEALTH_FAILURES`` times in a row is recycled.
- A support process alive for a second is READY.
- A child that ignored SIGTERM past its ``kill_at`` is killed.

The decisions take the time as an argument, so that they are tested with a fake clock.
"""

from __future__ import annotations

import logging

from ... import exitcodes
from .handle import READY, RESTARTING, STARTING, ChildHandle
from .ports import PortAllocator
from .probes import HEALTH_FAILURES
from .table import ChildTable

logger = logging.getLogger(__name__)

NO_RESTART_CODES = (exitcodes.LOAD_FAILED, exitcodes.CONFIG_ERROR)
BIND_RETRIES = 3
STABLE_AFTER = 60.0  # seconds READY after which the backoff starts again from 1 s
BACKOFF_MAX = 30.0
SUPPORT_SETTLE = 1.0  # a support process alive this long counts as READY


def backoff(failures: int) -> float:
    """Seconds before the restart that follows ``failures`` failed runs in a row."""
    return min(BACKOFF_MAX, 2.0 ** max(0, failures - 1))


class RestartPolicy:
    def __init__(self, table: ChildTable, ports: PortAllocator):
        self.table = table
        self.ports = ports

    def step(self, handle: ChildHandle, now: float, detail: str | None) -> bool:
        """Act on one child (under the table's lock); True when it must be spawned now. ``detail``:
        what a model server that had exited at this tick's first look wrote in its error file
        (None when it had not exited then)."""
        proc, state = handle.proc, handle.state
        if state == STARTING and proc is None:
            return True
        code = proc.poll() if proc is not None else None
        if code is not None and detail is None and not handle.is_support:
            return False  # it exited since this tick's first look: its error file is read at the next tick
        detail = detail or ""
        if state in (STARTING, READY):
            if code is not None:
                return self.exited(handle, code, now, detail)
            startup_timeout = self.table.config.startup_timeout
            if handle.is_support:
                if state == STARTING and now - handle.started_at >= SUPPORT_SETTLE:
                    self.table.transition(handle, READY, f"{now - handle.started_at:.2f}s after start")
            elif state == STARTING and now - handle.started_at > startup_timeout:
                self.table.fail(handle, f"not ready after STARTUP_TIMEOUT={startup_timeout:g}s")
                self.table.terminate(handle, now)
            elif state == READY and handle.health_failures >= HEALTH_FAILURES:
                self.recycle(handle, now)
            if handle.state == READY and handle.failures and now - (handle.ready_at or now) > STABLE_AFTER:
                handle.failures = 0
        elif code is None and proc is not None and handle.kill_at is not None and now >= handle.kill_at:
            logger.warning("%s (pid %d) ignored SIGTERM: killing it", handle.name, proc.pid)
            proc.kill()
        elif state == RESTARTING and code is not None and now >= handle.restart_at:
            return True
        return False

    def exited(self, handle: ChildHandle, code: int, now: float, detail: str) -> bool:
        """A STARTING or READY child exited with ``code``; True when it must be spawned again now."""
        handle.exit_code = code
        if not handle.is_support:
            if code == exitcodes.BIND_FAILED and handle.bind_retries < BIND_RETRIES:
                handle.bind_retries += 1
                try:
                    handle.port = self.ports.allocate(handle.port_key or handle.name, handle.endpoint.host,
                                                      avoid=handle.port)
                except Exception as exc:  # noqa: BLE001 - reported as the server's error
                    detail = f"{detail}; {exc}"
                else:
                    logger.warning("%s: port taken, retrying on port %d", handle.name, handle.port)
                    return True
            if code in NO_RESTART_CODES:
                reason = exitcodes.DESCRIPTIONS[code]
                self.table.fail(handle, f"{reason} (exit code {code})" + (f": {detail}" if detail else ""))
                return False
        self.schedule_restart(handle, now, f"exited with code {code}" + (f": {detail}" if detail else ""))
        return False

    def schedule_restart(self, handle: ChildHandle, now: float, why: str) -> None:
        handle.failures += 1
        handle.restarts += 1
        delay = backoff(handle.failures)
        handle.restart_at = now + delay
        self.table.transition(handle, RESTARTING, why, event="RESTART")
        logger.info("%s: restarting in %.0fs (restart #%d)", handle.name, delay, handle.restarts)

    def recycle(self, handle: ChildHandle, now: float) -> None:
        """Replace a server whose health probes keep failing (its workers stuck, or hung)."""
        self.table.terminate(handle, now)
        self.schedule_restart(handle, now, f"unhealthy: {handle.error or 'no answer to /health'}")
