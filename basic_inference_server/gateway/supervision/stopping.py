"""Stopping children (:class:`Stopper`): SIGTERM together, one shared grace, SIGKILL past it; each
becomes STOPPED and stays so until started again."""

from __future__ import annotations

import logging
import subprocess
import time
from typing import Any

from .handle import STOPPED, STOPPING, ChildHandle
from .table import ChildTable

logger = logging.getLogger(__name__)


class Stopper:
    def __init__(self, table: ChildTable):
        self.table = table

    def stop(self, handles: list[ChildHandle], grace: float) -> dict[str, dict[str, Any]]:
        """Stop ``handles`` at once and wait for them (SIGKILL after ``grace``): name -> its pid
        and exit code."""
        table = self.table
        with table.lock:
            for handle in handles:
                table.transition(handle, STOPPING)
                if handle.proc is not None and handle.proc.poll() is None:
                    handle.proc.terminate()
        table.flush()
        deadline = time.monotonic() + grace
        stopped = {handle.name: self.reap(handle, deadline) for handle in handles}
        table.flush()
        return stopped

    def reap(self, handle: ChildHandle, deadline: float) -> dict[str, Any]:
        """Wait for a child asked to stop (SIGKILL at ``deadline``); it is STOPPED after."""
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
        with self.table.lock:
            handle.exit_code, handle.ready_at = code, None
            self.table.transition(handle, STOPPED, f"exit code {code}")
        if handle.http is not None:
            handle.http.close()
            handle.http = None  # a start builds a new pool
        return {"PID": proc.pid if proc is not None else None, "RETURN_CODE": code}
