"""States that cross a process boundary, each an Enum on both sides and serialised by its name.

- :class:`ChildState`: a child of the gateway, in ``/list_servers`` (read by ``bis`` and the
  client); changed by the supervisor's table only.
- :class:`ServerHealth`: a model server's own ``/health`` ``status`` (read by the gateway's remote
  pool and its probes).
- :class:`ReloadState`: a reload's result, in the answers of ``/reload_server`` and
  ``/reload_config`` (read by ``bis reload``).
"""

from __future__ import annotations

from enum import Enum


class ChildState(str, Enum):
    """A child's state; a ``str`` so that it serialises as its name in JSON."""

    STARTING = "STARTING"
    READY = "READY"
    RESTARTING = "RESTARTING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    __str__ = str.__str__
    __format__ = str.__format__


class ServerHealth(Enum):
    """What a model server says of itself on ``/health``."""

    READY = "ready"  # every worker loaded, none stuck: 200
    LOADING = "loading"  # workers still loading its model: 503
    DRAINING = "draining"  # stopping: finishing what it holds, taking nothing new: 503
    STUCK = "stuck"  # its workers are held past REQUEST_TIMEOUT: 503 (the gateway recycles it)

    @classmethod
    def read(cls, name: object) -> ServerHealth | None:
        """The state a ``/health`` answer names (None: it names none)."""
        return cls.__members__.get(name) if isinstance(name, str) else None


class ReloadState(Enum):
    """Where a reload (or a recycle) of an endpoint stands."""

    STARTING = "starting"  # the new generation of a replica is loading
    DONE = "done"  # every replica switched to its new generation
    FAILED = "failed"  # a new generation did not start: the old one goes on serving

    @classmethod
    def read(cls, name: object) -> ReloadState | None:
        """The state an answer names (None: it names none)."""
        return cls.__members__.get(name) if isinstance(name, str) else None
