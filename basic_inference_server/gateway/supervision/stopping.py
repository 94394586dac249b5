"""The supervisor's part in stopping its children: together, within one grace, killed past it.

Mixed into :class:`~.supervisor.Supervisor`, whose table, lock and state changes these use.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .handle import STOPPED, STOPPING, ChildHandle

if TYPE_CHECKING:
    from .supervisor import Supervisor

    _Base = Supervisor
else:
    _Base = object

logger = logging.getLogger(__name__)


class StoppingMixin(_Base):
    def stop_many(self, names: list[str], grace: float | None = None) -> dict[str, dict[str, Any]]:
        """Stop children at once (SIGTERM together, SIGKILL after one shared grace); they become
        STOPPED and stay so until started again."""
        with self._lock:
            handles = [self.handles[n] for n in names]
        return self._stop_handles(handles, self.config.shutdown_grace if grace is None else grace)

    def _stop_handles(self, handles: list[ChildHandle], grace: float) -> dict[str, dict[str, Any]]:
        with self._lock:
            for handle in handles:
                self._transition(handle, STOPPING)
                if handle.proc is not None and handle.proc.poll() is None:
                    handle.proc.terminate()
        self._flush()
        deadline = time.monotonic() + grace
        stopped = {handle.name: self._reap(handle, deadline) for handle in handles}
        self._flush()
        return stopped

    def stop_all(self, grace: float | None = None) -> None:
        with self._lock:
            running = [n for n, h in self.handles.items() if h.proc is not None and h.proc.poll() is None]
            others = [h for h in self.reloader.handles() if h.proc is not None and h.proc.poll() is None]
        for handle in others:  # generations loading for a reload, or draining after one
            handle.proc.terminate()
        if running:
            logger.info("Stopping %d child process(es): %s", len(running), ", ".join(running))
            self.stop_many(running, grace)
        for handle in others:
            self._reap(handle, time.monotonic() + (self.config.shutdown_grace if grace is None else grace))
        self._probes.shutdown(wait=False, cancel_futures=True)
        if self._temporary_sockets:
            shutil.rmtree(self.socket_folder, ignore_errors=True)
        else:
            for secret in self.socket_folder.glob("*.secret"):  # the servers' secrets go with them
                secret.unlink(missing_ok=True)

    def _reap(self, handle: ChildHandle, deadline: float) -> dict[str, Any]:
        proc = handle.proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) ignored SIGTERM: killing it", handle.name, proc.pid)
                proc.kill()
                code = proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        with self._lock:
            handle.exit_code, handle.ready_at = code, None
            self._transition(handle, STOPPED, f"exit code {code}")
        if handle.http is not None:
            handle.http.close()
            handle.http = None  # a start builds a new pool
        return {"PID": proc.pid if proc is not None else None, "RETURN_CODE": code}
