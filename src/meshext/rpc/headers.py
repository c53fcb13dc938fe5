"""The headers of a gRPC call: reading a request's, writing a response's and its trailers.

Requests are HPACK-decoded by the ``hpack`` library (the connection owns the decoder,
whose dynamic table spans the connection). Responses are written as HPACK literals
that never enter the peer's dynamic table, so the server keeps no encoder state:
``:status: 200`` and ``content-type: application/grpc`` are the same bytes on every
stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from meshext.rpc.status import Status

MAX_MESSAGE_BYTES: Final = 4096
"""A ``grpc-message`` is cut to whole characters that take at most this many bytes once
percent-encoded, so that trailers stay one frame and within a client's metadata limit
(a character can take 12 bytes)."""


class BadRequest(Exception):
    """A request's headers do not make a gRPC call; ``http_status`` says how to answer."""

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class CallHeaders:
    """What the server needs from a request's headers."""

    path: str
    encoding: str
    user_agent: str


def read_call(headers: Iterable[tuple[str, str]]) -> CallHeaders:
    """The call a request's (decoded) headers make, or :class:`BadRequest`."""
    fields: dict[str, str] = {}
    for name, value in headers:
        if name in fields and name.startswith(":"):
            raise BadRequest(f"pseudo-header {name} repeated")
        fields[name] = value
    method = fields.get(":method")
    if method != "POST":
        raise BadRequest(f"method {method!r} is not POST", 405)
    path = fields.get(":path", "")
    if not path.startswith("/"):
        raise BadRequest(f"path {path!r} is not absolute")
    content_type = fields.get("content-type", "")
    if not content_type.startswith("application/grpc"):
        raise BadRequest(f"content-type {content_type!r} is not gRPC", 415)
    return CallHeaders(
        path=path,
        encoding=fields.get("grpc-encoding", "identity"),
        user_agent=fields.get("user-agent", ""),
    )


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK's integer with an N-bit prefix (RFC 7541 §5.1), ``first`` holding the flags."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: bytes) -> bytes:
    return _integer(len(text), 7, 0) + text


def literal(name: bytes, value: bytes) -> bytes:
    """A header field, literal without indexing, new name, no Huffman coding."""
    return b"\x00" + _string(name) + _string(value)


def literal_indexed_name(index: int, value: bytes) -> bytes:
    """A header field, literal without indexing, name from the static table."""
    return _integer(index, 4, 0) + _string(value)


_STATUS_200: Final = b"\x88"  # static table index 8, ":status: 200"
_CONTENT_TYPE: Final = 31  # static table index of "content-type"

RESPONSE_HEADERS: Final = _STATUS_200 + literal_indexed_name(_CONTENT_TYPE, b"application/grpc")
"""The header block of every response: ``:status: 200``, ``content-type``."""


def percent_encode(message: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8, with bytes outside printable ASCII and ``%``
    percent-encoded; cut to :data:`MAX_MESSAGE_BYTES`."""
    out = bytearray()
    for char in message:
        piece = char.encode("utf-8", "replace")
        if len(piece) > 1 or not 0x20 <= piece[0] <= 0x7E or piece == b"%":
            piece = b"".join(b"%%%02X" % byte for byte in piece)
        if len(out) + len(piece) > MAX_MESSAGE_BYTES:
            break
        out += piece
    return bytes(out)


def trailers(status: Status, message: str = "", extra: Mapping[str, str] | None = None) -> bytes:
    """The header block ending a call."""
    block = literal(b"grpc-status", str(int(status)).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    for name, value in (extra or {}).items():
        block += literal(name.encode("ascii"), value.encode("ascii"))
    return block


def http_error(http_status: int) -> bytes:
    """The header block of a plain HTTP error answer (no gRPC call was made)."""
    return literal_indexed_name(8, str(http_status).encode()) + literal_indexed_name(
        _CONTENT_TYPE, b"text/plain"
    )


__all__ = [
    "RESPONSE_HEADERS",
    "BadRequest",
    "CallHeaders",
    "http_error",
    "literal",
    "percent_encode",
    "read_call",
    "trailers",
]
