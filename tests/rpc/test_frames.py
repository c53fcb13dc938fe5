"""The server's HTTP/2 frame encoders (``meshext.rpc.frames``), checked against the
byte layout of RFC 9113."""

from __future__ import annotations

import struct

import pytest

from meshext.rpc import frames as f


@pytest.mark.parametrize(
    ("length", "frame_type", "flags", "stream_id"),
    [(0, 0, 0, 0), (16_384, 1, 0x25, 1), (2**24 - 1, 9, 0xFF, 2**31 - 1), (8, 6, 1, 0)],
)
def test_a_frame_header_round_trips(
    length: int, frame_type: int, flags: int, stream_id: int
) -> None:
    header = f.frame_header(length, frame_type, flags, stream_id)
    assert len(header) == 9
    assert int.from_bytes(header[:3], "big") == length
    assert (header[3], header[4]) == (frame_type, flags)
    assert f.parse_frame_header(b"junk" + header, 4) == (length, frame_type, flags, stream_id)


def test_the_reserved_bit_of_a_stream_id_is_ignored_when_parsing() -> None:
    header = b"\x00\x00\x05\x00\x01\x80\x00\x00\x03"
    assert f.parse_frame_header(header, 0) == (5, 0, 1, 3)


def test_settings_round_trip_and_are_sent_on_stream_0() -> None:
    pairs = [(f.Setting.MAX_CONCURRENT_STREAMS, 100), (f.Setting.INITIAL_WINDOW_SIZE, 2**31 - 1)]
    frame = f.settings_frame(pairs)
    assert f.parse_frame_header(frame, 0) == (12, f.FrameType.SETTINGS, 0, 0)
    assert f.parse_settings(frame[9:]) == [(3, 100), (4, 2**31 - 1)]


def test_the_settings_acknowledgement_is_an_empty_settings_frame_with_ack() -> None:
    assert f.SETTINGS_ACK == b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def test_ping_and_its_acknowledgement_carry_the_opaque_bytes() -> None:
    assert f.ping(b"abcdefgh") == b"\x00\x00\x08\x06\x00\x00\x00\x00\x00abcdefgh"
    assert f.ping_ack(b"abcdefgh") == b"\x00\x00\x08\x06\x01\x00\x00\x00\x00abcdefgh"


def test_a_window_update_carries_its_increment() -> None:
    frame = f.window_update(7, 2**31 - 1)
    assert f.parse_frame_header(frame, 0) == (4, f.FrameType.WINDOW_UPDATE, 0, 7)
    assert struct.unpack(">I", frame[9:]) == (2**31 - 1,)


def test_rst_stream_carries_its_error_code() -> None:
    frame = f.rst_stream(5, f.ErrorCode.REFUSED_STREAM)
    assert frame == b"\x00\x00\x04\x03\x00\x00\x00\x00\x05\x00\x00\x00\x07"


def test_goaway_carries_the_last_stream_the_code_and_debug_data() -> None:
    frame = f.goaway(41, f.ErrorCode.ENHANCE_YOUR_CALM, b"calm down")
    assert f.parse_frame_header(frame, 0) == (17, f.FrameType.GOAWAY, 0, 0)
    assert struct.unpack(">II", frame[9:17]) == (41, 0xB)
    assert frame[17:] == b"calm down"


def test_the_preface_is_the_one_of_rfc_9113() -> None:
    assert bytes.fromhex("505249202a20485454502f322e300d0a0d0a534d0d0a0d0a") == f.PREFACE
