"""The Open Inference Protocol's system shared-memory extension (Triton's, which
``tritonclient.utils.shared_memory`` speaks): a client on the same host puts its tensors in POSIX
shared memory (``/dev/shm/<key>``), registers each region under a name, and an infer request's
inputs and outputs name a region, an offset and a size instead of carrying their data.

The gateway keeps the regions registered (``POST /v2/systemsharedmemory/region/<name>/register``
and ``.../unregister``, ``GET .../status``) in a small JSON file of its run folder, written whole
and replaced at once (:class:`Registry`); the model servers, which read the inputs and write the
outputs (the gateway never parses tensors), read that file when a request names a region
(:class:`Regions`, cached by the file's modification time). Off unless ``ALLOW_CLIENT_SHM`` is
true; only loopback clients may register; a region is checked at registration (its name, a key
that is a name in ``/dev/shm`` and nothing else, its offset and size within the segment) and each
use within the region.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..errors import BadRequest, NotFound

SHM_FOLDER = Path("/dev/shm")
FILE_NAME = "shm_regions.json"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_KEY = re.compile(r"^/?[A-Za-z0-9_.\-]{1,200}$")


def _segment(key: str) -> Path:
    if not _KEY.match(key) or key.strip("/") in (".", ".."):
        raise BadRequest(f"key {key!r}: expected the name of a POSIX shared-memory segment ('/name', letters, "
                         "digits, '_', '.', '-')")
    return SHM_FOLDER / key.lstrip("/")


class Registry:
    """The regions registered with the gateway (its routes' side)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._regions: dict[str, dict[str, Any]] = {}

    def register(self, name: str, body: Any) -> None:
        if not _NAME.match(name):
            raise BadRequest(f"region name {name!r}: expected 1 to 128 letters, digits, '_', '.' or '-'")
        if not isinstance(body, dict):
            raise BadRequest("expected {\"key\": ..., \"offset\": ..., \"byte_size\": ...}")
        key, offset, size = body.get("key"), body.get("offset", 0), body.get("byte_size")
        if not isinstance(key, str):
            raise BadRequest("key: expected the segment's name, a string")
        for field, value in (("offset", offset), ("byte_size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadRequest(f"{field}: expected an integer >= 0, got {value!r}")
        segment = _segment(key)
        try:
            length = segment.stat().st_size
        except OSError:
            raise BadRequest(f"no shared-memory segment {key!r} (create it first, as "
                             "tritonclient.utils.shared_memory.create_shared_memory_region does)") from None
        if offset + size > length:
            raise BadRequest(f"region {name!r}: offset {offset} + byte_size {size} is past the end of {key!r} "
                             f"({length} bytes)")
        with self._lock:
            if name in self._regions:
                raise BadRequest(f"region {name!r} is registered already: unregister it first")
            self._regions[name] = {"name": name, "key": key, "offset": offset, "byte_size": size}
            self._save()

    def unregister(self, name: str | None) -> None:
        """Forget region ``name`` (None: every region); a name not registered is no error (Triton's)."""
        with self._lock:
            if name is None:
                self._regions.clear()
            else:
                self._regions.pop(name, None)
            self._save()

    def status(self, name: str | None) -> list[dict[str, Any]]:
        with self._lock:
            if name is None:
                return list(self._regions.values())
            if name not in self._regions:
                raise NotFound(f"no shared-memory region {name!r} is registered")
            return [self._regions[name]]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self._regions))
        os.replace(partial, self.path)  # the model servers see the old table or the new, never half


class Regions:
    """The regions as a model server reads and writes them (from the gateway's file)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[float, dict[str, dict[str, Any]]] = (-1.0, {})

    def _region(self, name: str) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = 0.0
        with self._lock:
            if mtime != self._seen[0]:
                try:
                    self._seen = (mtime, json.loads(self.path.read_text()))
                except (OSError, ValueError):
                    self._seen = (mtime, {})
            region = self._seen[1].get(name)
        if region is None:
            raise BadRequest(f"shared-memory region {name!r} is not registered")
        return region

    def _mapped(self, name: str, offset: int, size: int, write: bool) -> tuple[mmap.mmap, int]:
        region = self._region(name)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or \
                isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"region {name!r}: offset and byte_size must be integers >= 0")
        if offset + size > region["byte_size"]:
            raise BadRequest(f"region {name!r}: offset {offset} + {size} bytes is past its byte_size "
                             f"{region['byte_size']}")
        start = region["offset"] + offset
        try:
            fd = os.open(_segment(region["key"]), os.O_RDWR if write else os.O_RDONLY)
        except OSError as exc:
            raise BadRequest(f"region {name!r}: its segment {region['key']!r} cannot be opened: {exc.strerror}") \
                from None
        try:
            page = start - start % mmap.ALLOCATIONGRANULARITY
            memory = mmap.mmap(fd, start - page + size, offset=page,
                               prot=mmap.PROT_READ | (mmap.PROT_WRITE if write else 0))
        except (OSError, ValueError) as exc:
            raise BadRequest(f"region {name!r}: cannot be mapped: {exc}") from None
        finally:
            os.close(fd)
        return memory, start - page

    def read(self, name: str, offset: int, size: int) -> memoryview:
        """``size`` bytes of region ``name`` from ``offset``: a read-only view, no copy."""
        if size == 0:
            return memoryview(b"")
        memory, at = self._mapped(name, offset, size, write=False)
        return memoryview(memory).toreadonly()[at:at + size]

    def write(self, name: str, offset: int, data: memoryview | bytes, size: int) -> None:
        """Write ``data`` into region ``name`` at ``offset``; BadRequest when it is larger than the
        ``size`` the request gave for it."""
        if len(data) > size:
            raise BadRequest(f"output of {len(data)} bytes does not fit the {size} bytes given in region {name!r}")
        if not len(data):
            return
        memory, at = self._mapped(name, offset, len(data), write=True)
        with memory:
            memory[at:at + len(data)] = data


SHM_REGION, SHM_SIZE, SHM_OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"


def shm_place(name: str, parameters: dict[str, Any], regions: Any) -> tuple[int, int]:
    """(offset, byte size) of a tensor given in a shared-memory region; BadRequest when the
    extension is off or they are not integers."""
    if regions is None:
        raise BadRequest(f"tensor {name!r} names a shared-memory region: the system shared-memory extension is "
                           "off (ALLOW_CLIENT_SHM in config_gateway.txt)")
    size, offset = parameters.get(SHM_SIZE), parameters.get(SHM_OFFSET, 0)
    for what, value in ((SHM_SIZE, size), (SHM_OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"tensor {name!r}: {what} must be an integer >= 0, got {value!r}")
    return offset, size
