"""HTTP/2 frames (RFC 9113): the constants and pure encoders the gRPC server needs.

Only what a server of long-lived gRPC streams sends is encoded here: SETTINGS, their
acknowledgement, PING acknowledgements, WINDOW_UPDATE, RST_STREAM, GOAWAY, and the
headers of DATA and HEADERS frames (the server writes a frame's header and its
payload side by side, so a response encoded once is never copied per stream).
Parsing happens in :mod:`meshext.rpc.connection`, where it is interleaved with the
connection's state.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Final

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What every client connection starts with."""

FRAME_HEADER: Final = struct.Struct(">I B I")
"""Length (24 bits, packed with the type into the first word), type, flags, stream id."""

DEFAULT_MAX_FRAME_SIZE: Final = 16_384
DEFAULT_WINDOW: Final = 65_535
MAX_WINDOW: Final = 2**31 - 1


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag:
    END_STREAM: Final = 0x1
    ACK: Final = 0x1
    END_HEADERS: Final = 0x4
    PADDED: Final = 0x8
    PRIORITY: Final = 0x20


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    """The 9 bytes in front of a frame's payload."""
    return FRAME_HEADER.pack((length << 8) | frame_type, flags, stream_id)


def parse_frame_header(
    data: bytes | bytearray | memoryview, offset: int
) -> tuple[int, int, int, int]:
    """``(length, type, flags, stream id)`` of the frame header at ``offset``."""
    word, flags, stream_id = FRAME_HEADER.unpack_from(data, offset)
    return word >> 8, word & 0xFF, flags, stream_id & 0x7FFF_FFFF


def settings_frame(settings: Iterable[tuple[Setting, int]]) -> bytes:
    payload = b"".join(struct.pack(">HI", key, value) for key, value in settings)
    return frame_header(len(payload), FrameType.SETTINGS, 0, 0) + payload


SETTINGS_ACK: Final = frame_header(0, FrameType.SETTINGS, Flag.ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload (length checked by the caller)."""
    return [struct.unpack_from(">HI", payload, at) for at in range(0, len(payload), 6)]


def ping_ack(opaque: bytes) -> bytes:
    return frame_header(8, FrameType.PING, Flag.ACK, 0) + opaque


def ping(opaque: bytes) -> bytes:
    return frame_header(8, FrameType.PING, 0, 0) + opaque


def window_update(stream_id: int, increment: int) -> bytes:
    return frame_header(4, FrameType.WINDOW_UPDATE, 0, stream_id) + struct.pack(">I", increment)


def rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return frame_header(4, FrameType.RST_STREAM, 0, stream_id) + struct.pack(">I", code)


def goaway(last_stream_id: int, code: ErrorCode, debug: bytes = b"") -> bytes:
    payload = struct.pack(">II", last_stream_id, code) + debug
    return frame_header(len(payload), FrameType.GOAWAY, 0, 0) + payload


__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_WINDOW",
    "FRAME_HEADER",
    "MAX_WINDOW",
    "PREFACE",
    "SETTINGS_ACK",
    "ErrorCode",
    "Flag",
    "FrameType",
    "Setting",
    "frame_header",
    "goaway",
    "parse_frame_header",
    "parse_settings",
    "ping",
    "ping_ack",
    "rst_stream",
    "settings_frame",
    "window_update",
]
