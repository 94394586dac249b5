"""The HTTP front's connection slots: the keep-alive timeout shrinks as they fill, and the connection
idle the longest makes room for a new one (the real eviction, over sockets, is in the integration
tests of the front and of the attacks)."""

from __future__ import annotations

import pytest

from basic_inference_server.transport.httpfront import KEEPALIVE_FLOOR, FrontLimits, HttpFront


class _Idle:
    def __init__(self, name: str):
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def front():
    front = HttpFront(lambda environ, start: [], "127.0.0.1", 0, fast_path="/run", threads=1,
                      limits=FrontLimits(max_body=1024, keepalive_timeout=75, max_connections=100))
    yield front
    front.sock.close()
    front.executor.shutdown()
    front.loop.close()


@pytest.mark.parametrize(("open_", "timeout"),
                         [(0, 75), (50, 75), (75, 37.5), (90, 15), (99, 1.5), (100, KEEPALIVE_FLOOR)])
def test_the_keepalive_timeout_shrinks_once_half_the_slots_are_taken(front, open_, timeout):
    front.connections = {_Idle(str(n)) for n in range(open_)}
    assert front.keepalive_now() == pytest.approx(timeout)


def test_the_longest_idle_is_closed_first_and_only_an_idle_one(front):
    first, second = _Idle("first"), _Idle("second")
    front.connections = {first, second}
    front.idle = {first: None, second: None}
    assert front.evict_idle() and first.closed and not second.closed
    assert first not in front.connections and first not in front.idle
    assert front.evict_idle() and second.closed
    assert not front.evict_idle()  # none idle: the new connection is the one refused
    assert front.evicted == 2
