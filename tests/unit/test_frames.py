"""transport/frames.py: the internal channel's frames, decoded whole, in pieces, and refused."""

from __future__ import annotations

import socket
import threading

import pytest

from basic_inference_server.transport.frames import (
    CANCEL,
    HEAD,
    HEAD_SIZE,
    REPLY,
    REQUEST,
    FrameReader,
    ProtocolError,
    cancel_frame,
    reply_frame,
    request_head,
)


def request(tag: int, body: bytes, request_id: str = "rid-1", signature: str = "demo") -> bytes:
    return request_head(tag, request_id, signature, len(body)) + body


def test_header_layout_is_the_documented_one():
    assert HEAD_SIZE == 16
    frame = reply_frame(7, 503, b"{}", "2")
    assert frame[:16] == bytes([REPLY, 0]) + (503).to_bytes(2, "big") + (7).to_bytes(4, "big") + \
        (1).to_bytes(2, "big") + b"\0\0" + (2).to_bytes(4, "big")
    assert frame[16:] == b"2{}"


def test_request_round_trip():
    body = b'{"SIGNATURE": "demo", "X": [1, 2, 3]}'
    (frame,) = FrameReader().feed(request(42, body, "abc-123", "demo"))
    assert (frame.kind, frame.tag, frame.status, frame.body) == (REQUEST, 42, 0, body)
    assert frame.request_meta() == ("abc-123", "demo")


def test_reply_and_cancel_round_trip():
    frames = FrameReader().feed(reply_frame(1, 200, b'{"ok": 1}') + reply_frame(2, 503, b"{}", "5") + cancel_frame(3))
    assert [(f.kind, f.tag, f.status, f.meta, f.body) for f in frames] == [
        (REPLY, 1, 200, b"", b'{"ok": 1}'), (REPLY, 2, 503, b"5", b"{}"), (CANCEL, 3, 0, b"", b"")]


def test_an_empty_routed_signature_means_the_gateway_parsed_the_body():
    (frame,) = FrameReader().feed(request(1, b"{}", "rid", ""))
    assert frame.request_meta() == ("rid", "")


@pytest.mark.parametrize("piece", [1, 3, 16, 17, 1000])
def test_frames_split_anywhere_decode_the_same(piece):
    stream = b"".join(request(tag, bytes([tag]) * (tag * 100)) for tag in range(1, 8))
    reader = FrameReader()
    frames = []
    for start in range(0, len(stream), piece):
        frames += reader.feed(stream[start:start + piece])
    assert [(f.tag, f.body) for f in frames] == [(tag, bytes([tag]) * (tag * 100)) for tag in range(1, 8)]
    assert reader.pending == 0


def test_an_incomplete_frame_is_held_until_it_completes():
    data = request(5, b"x" * 1000)
    reader = FrameReader()
    assert reader.feed(data[:500]) == []
    assert reader.pending == 500
    (frame,) = reader.feed(data[500:])
    assert frame.body == b"x" * 1000


def test_an_oversize_body_is_reported_and_skipped_and_the_next_frame_still_decodes():
    reader = FrameReader(max_body=100)
    big, small = request(1, b"y" * 5000), request(2, b"ok")
    frames = reader.feed(big[:2000])
    assert [(f.tag, f.oversize, f.body) for f in frames] == [(1, 5000, b"")]
    assert frames[0].request_meta() == ("rid-1", "demo")
    assert reader.feed(big[2000:4000]) == []
    (after,) = reader.feed(big[4000:] + small)
    assert (after.tag, after.oversize, after.body) == (2, 0, b"ok")


def test_an_oversize_body_in_one_piece_is_skipped_too():
    reader = FrameReader(max_body=10)
    frames = reader.feed(request(1, b"z" * 50) + request(2, b"fine"))
    assert [(f.tag, f.oversize, f.body) for f in frames] == [(1, 50, b""), (2, 0, b"fine")]


def test_garbage_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        FrameReader().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_a_header_announcing_an_unknown_kind_is_refused_even_with_a_plausible_size():
    with pytest.raises(ProtocolError):
        FrameReader().feed(HEAD.pack(9, 0, 0, 1, 0, 0))


def test_over_a_socketpair_with_a_peer_dying_mid_frame():
    left, right = socket.socketpair(socket.AF_UNIX)
    frames_sent = [request(tag, bytes(range(256)) * 40) for tag in range(1, 4)]
    cut = frames_sent[2][: len(frames_sent[2]) // 2]

    def writer():
        for frame in frames_sent[:2]:
            left.sendall(frame)
        left.sendall(cut)
        left.close()  # the peer dies in the middle of the third frame

    thread = threading.Thread(target=writer)
    thread.start()
    reader, frames = FrameReader(), []
    right.settimeout(5)
    while chunk := right.recv(777):
        frames += reader.feed(chunk)
    thread.join()
    right.close()
    assert [f.tag for f in frames] == [1, 2]
    assert all(f.body == bytes(range(256)) * 40 for f in frames)
    assert reader.pending == len(cut)  # what the reader holds of the frame that never completed
