"""transport/frames.py: the internal channel's frames, decoded whole, in pieces, and refused."""

from __future__ import annotations

import socket
import threading

import pytest

from basic_inference_server.transport.frames import (
    BINARY,
    CANCEL,
    HEAD,
    HEAD_SIZE,
    OWN_BUFFER,
    REPLY,
    REQUEST,
    SCRATCH,
    STREAM,
    V2,
    FrameReader,
    ProtocolError,
    cancel_frame,
    reply_frame,
    reply_head,
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


def test_a_large_body_is_received_into_a_buffer_of_its_own():
    body = bytes(range(256)) * 4096  # 1 MB
    data = request(9, body) + request(10, b"after")
    reader = FrameReader()
    first = reader.get_buffer()
    first[:SCRATCH // 2] = data[:SCRATCH // 2]  # the header and the start of the body
    assert reader.filled(SCRATCH // 2) == []
    target = reader.get_buffer()
    assert len(target) == len(body) - (SCRATCH // 2 - len(request(9, b"")))  # the rest of the body, no more
    done = SCRATCH // 2
    while done < len(data) - len(request(10, b"after")):
        target = reader.get_buffer()
        count = min(len(target), 300_000)
        target[:count] = data[done:done + count]
        frames = reader.filled(count)
        done += count
    (frame,) = frames
    assert isinstance(frame.body, bytearray) and frame.body == body and frame.tag == 9
    (after,) = reader.feed(data[done:])
    assert (after.tag, after.body, reader.pending) == (10, b"after", 0)


@pytest.mark.parametrize("size", [0, 100, OWN_BUFFER - 1, OWN_BUFFER, SCRATCH - 100, SCRATCH, 3 * SCRATCH + 7])
def test_bodies_of_every_size_read_with_recv_into_arrive_whole(size):
    left, right = socket.socketpair(socket.AF_UNIX)
    bodies = [bytes([n]) * size + b"#" * n for n in range(1, 6)]
    stream = b"".join(request(n, body) for n, body in enumerate(bodies, 1))
    thread = threading.Thread(target=lambda: (left.sendall(stream), left.close()))
    thread.start()
    reader, frames = FrameReader(), []
    right.settimeout(5)
    while count := right.recv_into(reader.get_buffer()):
        frames += reader.filled(count)
    thread.join()
    right.close()
    assert [(f.tag, bytes(f.body)) for f in frames] == list(enumerate(bodies, 1))
    assert reader.pending == 0


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


# -- Open Inference Protocol (V2) requests and binary answers ----------------------------------
@pytest.mark.parametrize(("header_length", "version"), [(123, "1"), (None, "2024-05"), (0, ""), (None, "")])
def test_a_v2_request_carries_its_header_length_and_model_version(header_length, version):
    body = b'{"inputs": []}' + bytes(range(8))
    head = request_head(9, "rid-v2", "mnist", len(body), v2=(header_length, version))
    (frame,) = FrameReader().feed(head + body)
    assert (frame.kind, frame.tag, frame.flags, frame.body) == (REQUEST, 9, V2, body)
    assert frame.v2_meta() == (header_length, version)
    assert frame.request_meta() == ("rid-v2", "mnist")


def test_a_v2_request_meta_is_the_documented_one():
    head = request_head(1, "rid", "sig", 0, v2=(42, "3"))
    assert head[HEAD_SIZE:] == b"rid\nsig\n42\n3"
    assert head[1] == V2
    assert request_head(1, "rid", "sig", 0, v2=(None, "3"))[HEAD_SIZE:] == b"rid\nsig\n\n3"


def test_the_v2_flag_adds_to_the_stream_flag():
    (frame,) = FrameReader().feed(request_head(2, "r", "s", 0, flags=STREAM, v2=(None, "1")))
    assert frame.flags == STREAM | V2
    assert frame.v2_meta() == (None, "1")


def test_a_plain_request_has_no_v2_flag_and_no_v2_meta():
    (frame,) = FrameReader().feed(request(3, b"{}", "rid", "demo"))
    assert frame.flags == 0
    assert not frame.flags & V2
    assert frame.request_meta() == ("rid", "demo")
    with pytest.raises(ProtocolError, match="2 fields, not 4"):
        frame.v2_meta()


def test_a_v2_request_split_anywhere_decodes_the_same():
    body = bytes(range(256)) * 4
    stream = request_head(5, "rid", "m", len(body), v2=(100, "7")) + body
    reader, frames = FrameReader(), []
    for start in range(0, len(stream), 5):
        frames += reader.feed(stream[start:start + 5])
    (frame,) = frames
    assert (frame.flags, frame.body, frame.v2_meta(), frame.request_meta()) == (V2, body, (100, "7"), ("rid", "m"))


def test_an_oversize_v2_request_keeps_its_meta():
    reader = FrameReader(max_body=10)
    (frame,) = reader.feed(request_head(6, "rid", "m", 50, v2=(20, "1")) + b"b" * 50)
    assert (frame.oversize, frame.body, frame.flags) == (50, b"", V2)
    assert frame.v2_meta() == (20, "1")


def test_a_binary_reply_in_pieces_decodes_as_one_reply_with_its_header_length():
    header, tensor = b'{"outputs": [{"name": "y"}]}', memoryview(bytes(range(16)))
    pieces = [reply_head(11, 200, len(header) + len(tensor), str(len(header)), BINARY), header, tensor]
    (frame,) = FrameReader().feed(b"".join(pieces))
    assert (frame.kind, frame.tag, frame.status, frame.flags) == (REPLY, 11, 200, BINARY)
    assert int(frame.meta) == len(header)
    assert frame.body == header + bytes(range(16))
    assert frame.body[int(frame.meta):] == bytes(range(16))


def test_reply_frame_is_reply_head_then_the_body():
    assert reply_frame(4, 503, b"{}", "2") == reply_head(4, 503, 2, "2") + b"{}"
    (frame,) = FrameReader().feed(reply_frame(4, 200, b"{}"))
    assert (frame.flags, frame.meta) == (0, b"")
