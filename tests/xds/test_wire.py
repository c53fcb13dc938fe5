"""Responses assembled from pre-encoded parts are byte for byte protobuf's own."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2

from meshext.xds import types, wire
from meshext.xds.protocol import DeltaStream, Response, SotwStream, _ResponseMemo
from meshext.xds.snapshot import Resource, make_resource
from tests.xds.builders import delta_request, resource, snapshot, sotw_request

LDS, CDS, ECDS = types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG

# Names and contents long enough for multi-byte lengths, and not only ASCII.
LONG = "x" * 300
NAMES = ("a", "ünïcode-ñame", LONG)


def packed_resources(type_url: str, names: tuple[str, ...] = NAMES) -> list[Resource]:
    return [make_resource(type_url, resource(type_url, name, name * 3)) for name in names]


@pytest.mark.parametrize("value", [1, 127, 128, 300, 16_383, 16_384, 2**21, 2**35 + 7])
def test_varints_match_protobuf(value: int) -> None:
    # UInt64Value: field 1, varint (wire type 0).
    assert wrappers_pb2.UInt64Value(value=value).SerializeToString() == b"\x08" + wire.varint(value)


def test_a_resource_keeps_its_any_serialized() -> None:
    for made in packed_resources(LDS):
        assert made.encoded == made.packed.SerializeToString()
        assert any_pb2.Any.FromString(made.encoded) == made.packed


def test_an_any_is_encoded_as_protobuf_does() -> None:
    for type_url, value in (("t/x", b"abc"), ("", b"abc"), ("t/y", b""), ("t/" + LONG, b"v" * 200)):
        expected = any_pb2.Any(type_url=type_url, value=value).SerializeToString()
        assert wire.encode_any(type_url, value) == expected


@pytest.mark.parametrize("version", ["", "1", "v" * 200])
@pytest.mark.parametrize("count", [0, 1, 3])
@pytest.mark.parametrize("nonce", ["1", "12345", "n" * 130])
def test_a_state_of_the_world_response_is_protobufs_serialization(
    version: str, count: int, nonce: str
) -> None:
    made = packed_resources(CDS)[:count]
    expected = discovery_pb2.DiscoveryResponse(
        version_info=version,
        resources=[item.packed for item in made],
        type_url=CDS,
        nonce=nonce,
    )
    encoded = wire.sotw_head(version, CDS, (item.encoded for item in made)) + wire.nonce_field(
        nonce
    )
    assert encoded == expected.SerializeToString()
    assert encoded == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("version", ["", "abc"])
@pytest.mark.parametrize("count", [0, 1, 3])
@pytest.mark.parametrize("removed", [(), ("gone",), ("gone", LONG)])
def test_a_delta_response_is_protobufs_serialization(
    version: str, count: int, removed: tuple[str, ...]
) -> None:
    made = packed_resources(ECDS)[:count]
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version,
        type_url=ECDS,
        nonce="7",
        removed_resources=list(removed),
    )
    for item in made:
        expected.resources.add(name=item.name, version=item.version, resource=item.packed)
    head, tail = wire.delta_parts(version, ECDS, (item.delta_entry for item in made), removed)
    assert head + wire.nonce_field("7") + tail == expected.SerializeToString()


def test_an_empty_any_still_makes_a_delta_entry_with_its_resource_field() -> None:
    empty = Resource(name="n", version="v", message=None, packed=any_pb2.Any())
    expected = discovery_pb2.Resource(name="n", version="v", resource=any_pb2.Any())
    assert empty.delta_entry == expected.SerializeToString()


def reserialized(response: Response) -> bytes:
    message: Any = response.message
    return bytes(message.SerializeToString())


def test_the_machines_payloads_are_what_protobuf_would_send() -> None:
    current = snapshot({CDS: {"c": "1"}, LDS: {"l": "1"}, ECDS: {"e1": "1", "e2": "2"}})
    sotw = SotwStream()
    sotw.receive_snapshot(current)
    delta = DeltaStream()
    delta.receive_snapshot(current)
    found = []
    for type_url, names in ((CDS, []), (LDS, []), (ECDS, ["e1", "e2"])):
        found += sotw.receive_request(sotw_request(type_url, names))
        found += delta.receive_request(delta_request(type_url, names))
    sent = [event for event in found if isinstance(event, Response)]
    assert len(sent) == 6
    for response in sent:
        assert response.payload == reserialized(response)
        assert response.message.nonce == response.nonce


def test_streams_sent_the_same_response_share_its_encoding() -> None:
    current = snapshot({LDS: {"l": "1"}})
    first, second = SotwStream(), SotwStream()
    for stream in (first, second):
        stream.receive_snapshot(current)
    one = first.receive_request(sotw_request(LDS))
    other = second.receive_request(sotw_request(LDS))
    assert isinstance(one[0], Response)
    assert isinstance(other[0], Response)
    assert one[0].payload == other[0].payload
    # The same content in another snapshot object gives the same bytes too.
    third = SotwStream()
    third.receive_snapshot(snapshot({LDS: {"l": "1"}}))
    again = third.receive_request(sotw_request(LDS))
    assert isinstance(again[0], Response)
    assert again[0].payload == one[0].payload


def test_the_response_memo_forgets_its_oldest_encodings_past_its_budget() -> None:
    memo = _ResponseMemo(budget=10)
    memo.put(("a",), b"1234")
    memo.put(("b",), (b"12", b"34"))
    memo.put(("c",), b"1234")
    assert memo.get(("a",)) is None
    assert memo.get(("b",)) == (b"12", b"34")
    assert memo.get(("c",)) == b"1234"
