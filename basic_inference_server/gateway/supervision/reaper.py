"""Reaping orphans when the gateway is PID 1 (in a container, run without ``--init``).

A process whose parent dies is handed to PID 1 of its PID namespace, which must wait for it,
or it stays a zombie once it exits. In the image, PID 1 is the gateway, and orphans come from
its children: a model server that crashed while its endpoint code had subprocesses running, a
support script's helpers, a ``docker exec`` that left a background job behind.

The gateway's own children are not reaped here: their ``subprocess.Popen`` objects must collect
their exit codes (``poll()``/``wait()``), which the supervisor reads to decide about restarts.
So the next exited child is only peeked at (``WNOWAIT``) and waited for when it is not one of
them. ``waitid`` always shows the same first exited child: when that one is the supervisor's,
this stops and leaves the rest for the next call, made after the supervisor polled its children.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Container

logger = logging.getLogger(__name__)


def reap_orphans(
    known_pids: Container[int],
    *,
    getpid: Callable[[], int] = os.getpid,
    waitid: Callable[[int, int, int], os.waitid_result | None] | None = None,
    waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid,
) -> list[int]:
    """Wait for every exited child that is not in ``known_pids``; only when this process is PID 1.

    Args:
        known_pids: pids of the children whose ``Popen`` the caller holds and has not reaped yet.
        getpid, waitid, waitpid: the ``os`` functions (default), replaceable by tests.

    Returns:
        The pids reaped (empty when not PID 1, nothing exited, or the next exited child is known).
    """
    if getpid() != 1:
        return []
    waitid = waitid or os.waitid  # looked up here: os.waitid and its flags are POSIX-only
    peek = os.WEXITED | os.WNOHANG | os.WNOWAIT
    reaped = []
    while True:
        try:
            info = waitid(os.P_ALL, 0, peek)
        except ChildProcessError:
            break  # no children at all
        if info is None or info.si_pid == 0 or info.si_pid in known_pids:
            break  # nothing has exited, or the next one is for its Popen to collect
        # WNOHANG: the pid was just seen exited; should it have been reaped and reused meanwhile,
        # never block the supervisor's loop on a live process.
        try:
            pid, _status = waitpid(info.si_pid, os.WNOHANG)
        except ChildProcessError:
            continue  # collected by another thread meanwhile
        if pid == 0:
            break
        reaped.append(pid)
    if reaped:
        logger.info("Reaped %d orphaned process(es): %s", len(reaped), ", ".join(map(str, reaped)))
    return reaped
