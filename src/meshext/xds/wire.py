"""ADS responses encoded from parts serialized once, in protobuf's wire format.

Thousands of streams get the same response, differing only in its nonce. Rather than
building and serializing a ``DiscoveryResponse`` per stream, the server encodes the
part shared by every stream once (:func:`sotw_head`, :func:`delta_parts`) and appends
each stream's nonce field (:func:`nonce_field`). The resources inside are the ``Any``
bytes each :class:`~meshext.xds.snapshot.Resource` keeps since its snapshot was built.

Why by hand: the protobuf runtime has no way to serialize a message around bytes that
are already encoded, and copying every resource into a new message per stream and
serializing it again is most of what a push costs. The wire format makes this simple:
a message is the concatenation of its fields (tag, length, bytes for strings and
messages), protobuf's serializer writes fields in field-number order, and proto3
leaves empty strings out. The result is byte for byte what protobuf's own
serialization of the same message gives (tested), so clients parse it as usual.

Field numbers (``envoy.service.discovery.v3``): ``DiscoveryResponse`` version_info 1,
resources 2, type_url 4, nonce 5; ``DeltaDiscoveryResponse`` system_version_info 1,
resources 2, type_url 4, nonce 5, removed_resources 6; ``Resource`` version 1,
resource 2, name 3; ``google.protobuf.Any`` type_url 1, value 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (a string, bytes or an embedded message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def string_field(number: int, text: str) -> bytes:
    """Field ``number`` holding ``text``; nothing when empty, as proto3 does."""
    return length_delimited(number, text.encode()) if text else b""


def encode_any(type_url: str, value: bytes) -> bytes:
    """A ``google.protobuf.Any`` holding ``value`` (already serialized) of ``type_url``."""
    return string_field(1, type_url) + (length_delimited(2, value) if value else b"")


def sotw_head(version_info: str, type_url: str, resources: Iterable[bytes]) -> bytes:
    """A ``DiscoveryResponse`` without its nonce; ``resources`` are encoded ``Any``s.

    Append :func:`nonce_field` to get the whole response.
    """
    parts = [string_field(1, version_info)]
    parts.extend(length_delimited(2, packed) for packed in resources)
    parts.append(string_field(4, type_url))
    return b"".join(parts)


def delta_entry(name: str, version: str, packed: bytes) -> bytes:
    """An ``envoy.service.discovery.v3.Resource`` (as in a delta response), encoded."""
    return string_field(1, version) + length_delimited(2, packed) + string_field(3, name)


def delta_parts(
    system_version_info: str, type_url: str, entries: Iterable[bytes], removed: Iterable[str]
) -> tuple[bytes, bytes]:
    """A ``DeltaDiscoveryResponse`` as the parts before and after its nonce.

    ``entries`` are from :func:`delta_entry`; ``removed`` names removed resources.
    """
    head = [string_field(1, system_version_info)]
    head.extend(length_delimited(2, entry) for entry in entries)
    head.append(string_field(4, type_url))
    tail = b"".join(length_delimited(6, name.encode()) for name in removed)
    return b"".join(head), tail


@lru_cache(maxsize=4096)
def nonce_field(nonce: str) -> bytes:
    """The ``nonce`` field of either response (field 5 in both)."""
    return string_field(5, nonce)


__all__ = [
    "delta_entry",
    "delta_parts",
    "encode_any",
    "length_delimited",
    "nonce_field",
    "sotw_head",
    "string_field",
    "varint",
]
