"""Helpers shared by the bench scripts."""

from __future__ import annotations

from basic_inference_server.gateway.ports import port_is_free


def free_port_block(count: int, start: int) -> int:
    """First port of ``count`` consecutive free loopback ports from ``start``, below the
    ephemeral range (32768+) so that client connections never take them meanwhile."""
    for base in range(start, 32000 - count, 37):
        if all(port_is_free("127.0.0.1", port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no block of free ports below 32000")
