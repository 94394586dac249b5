"""Whether a model server that did not answer its health probe is hung, or only busy."""

from __future__ import annotations

from enum import Enum


class Probe(Enum):
    """What one health probe of a model server says."""

    HEALTHY = "healthy"  # /health answered 200
    BUSY = "busy"  # no answer in time, but answers or items came from it since the last probe
    FAILED = "failed"  # no answer and nothing else from it either (hung), or not 200 (stuck, draining)


def judge(status: int | None, progressed: bool) -> Probe:
    """A probe's verdict: a server busy with a large body holds the interpreter's lock, so its
    /health may not answer in time, yet it goes on answering requests; a hung one answers nothing.
    A server that answers /health with an error (its workers stuck) has said so itself."""
    if status == 200:
        return Probe.HEALTHY
    return Probe.BUSY if status is None and progressed else Probe.FAILED
