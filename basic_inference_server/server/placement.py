"""Where a model server's workers run and how they start: ``DEVICES`` and ``WARMUP_INPUTS``.

``DEVICES`` (``"cpu"``, ``"cuda:<n>"`` or a list of them) places replica *i* of an endpoint on
``DEVICES[i % len(DEVICES)]``. The gateway starts that replica's process with
``CUDA_VISIBLE_DEVICES`` set to the GPU's index (among the gateway's own CUDA_VISIBLE_DEVICES,
when it has one; empty for ``cpu``: no GPU), so inside the process the GPU is ``cuda:0``: that
is ``self.device``, and the configured name is ``self.physical_device``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .worker import CONTROL_KEYS

_DEVICE = re.compile(r"cpu|cuda:(\d{1,3})")
VISIBLE = "CUDA_VISIBLE_DEVICES"


def parse_devices(value: Any) -> tuple[str, ...]:
    """``DEVICES`` as a tuple of names; ValueError saying what is expected."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(
            isinstance(n, str) and _DEVICE.fullmatch(n) for n in names):
        raise ValueError(f'expected "cpu", "cuda:<n>" or a non-empty list of them, got {value!r}')
    return tuple(names)


def device_of(devices: tuple[str, ...], replica: int) -> str:
    """The device of replica number ``replica`` (0 for the first); "" without DEVICES."""
    return devices[replica % len(devices)] if devices else ""


def visible_devices(device: str, inherited: str | None = None) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for a process on ``device`` (None: leave it as it is). ``cuda:<n>``
    counts among the GPUs the gateway itself may use: when the gateway runs with
    ``CUDA_VISIBLE_DEVICES=2,3`` (a scheduler's allocation), ``cuda:0`` is GPU 2."""
    if not device:
        return None
    match = _DEVICE.fullmatch(device)
    if match is None or match.group(1) is None:
        return ""  # cpu: no GPU
    allowed = [d.strip() for d in (inherited or "").split(",") if d.strip()]
    index = int(match.group(1))
    return allowed[index] if index < len(allowed) else str(index)


def local_device(device: str) -> str | None:
    """The name of ``device`` inside its process, where it is the only GPU."""
    if not device:
        return None
    return "cpu" if device == "cpu" else "cuda:0"


def warmup_inputs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``WARMUP_INPUTS``: a list of request bodies (JSON objects); ValueError otherwise."""
    value = config.get("WARMUP_INPUTS")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"WARMUP_INPUTS: expected a list of request bodies (JSON objects), got {value!r}")
    return [{k: v for k, v in item.items() if k not in CONTROL_KEYS} for item in value]
