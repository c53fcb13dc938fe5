"""Frames between the main process and xDS workers, and the snapshot shipping over them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from google.protobuf import struct_pb2

from meshext.server.workers.claims import NodeClaims
from meshext.server.workers.shipping import Shipment, SnapshotTable
from meshext.server.workers.wire import (
    Frame,
    FrameBuffer,
    Kind,
    WireError,
    connection_from_json,
    connection_to_json,
    encode,
    node_from_json,
    node_to_json,
)
from meshext.xds import types
from meshext.xds.protocol import TypeStatus
from meshext.xds.server import ConnectionInfo
from meshext.xds.snapshot import Snapshot
from meshext.xds.types import Node


def extension(name: str, value: str) -> extension_pb2.TypedExtensionConfig:
    config = extension_pb2.TypedExtensionConfig(name=name)
    config.typed_config.Pack(struct_pb2.Value(string_value=value))
    return config


def snapshot(**extensions: str) -> Snapshot:
    return Snapshot.build(
        {
            types.CLUSTER: [cluster_pb2.Cluster(name="app")],
            types.EXTENSION_CONFIG: [extension(n, v) for n, v in extensions.items()],
        }
    )


def frames_of(data: list[bytes]) -> list[Frame]:
    return list(FrameBuffer().feed(b"".join(data)))


def kinds(data: list[bytes]) -> list[Kind]:
    return [frame.kind for frame in frames_of(data)]


def replay(table: SnapshotTable, data: list[bytes]) -> dict[str, Snapshot]:
    assigned = {}
    for frame in frames_of(data):
        result = table.apply(frame)
        if result is not None:
            for node_id in result[0]:
                assigned[node_id] = result[1]
    return assigned


def test_frames_survive_being_split_at_any_byte() -> None:
    data = encode(Kind.ACK, ["node", "t", "v", ["a"]]) + encode(
        Kind.DEFINE_RESOURCE, [1, "t", "n", "v", []], b"\x00\xffbytes"
    )
    buffer = FrameBuffer()
    frames = [frame for byte in data for frame in buffer.feed(bytes([byte]))]
    assert frames == [
        Frame(Kind.ACK, ["node", "t", "v", ["a"]]),
        Frame(Kind.DEFINE_RESOURCE, [1, "t", "n", "v", []], b"\x00\xffbytes"),
    ]


def test_an_unknown_frame_kind_is_an_error_naming_it() -> None:
    data = bytearray(encode(Kind.ACK, []))
    data[4] = 99
    with pytest.raises(WireError, match="unknown frame kind 99"):
        list(FrameBuffer().feed(bytes(data)))


def test_a_worker_rebuilds_the_snapshot_with_the_same_versions_and_bytes() -> None:
    original = snapshot(a="1", b="2")
    assigned = replay(SnapshotTable(), Shipment().assign("node", original))
    rebuilt = assigned["node"]
    assert rebuilt == original
    for type_url in original.type_urls:
        mine, theirs = original.resources(type_url), rebuilt.resources(type_url)
        assert mine.versions == theirs.versions
        for name, resource in mine.resources.items():
            assert theirs.resources[name].packed == resource.packed


def test_a_resource_shared_by_many_snapshots_is_sent_once() -> None:
    shipment = Shipment()
    first = shipment.assign("n1", snapshot(a="1", b="1"))
    second = shipment.assign("n2", snapshot(a="1", b="2"))
    assert kinds(first).count(Kind.DEFINE_RESOURCE) == 3  # cluster, a, b
    assert kinds(second) == [Kind.DEFINE_RESOURCE, Kind.DEFINE_SNAPSHOT, Kind.ASSIGN]
    assert shipment.resource_count == 4


def test_replicas_with_one_snapshot_cost_one_small_frame_each() -> None:
    shipment = Shipment()
    shipment.assign("n1", snapshot(a="1"))
    again = shipment.assign("n2", snapshot(a="1"))
    assert kinds(again) == [Kind.ASSIGN]
    assert len(again[0]) < 30
    assert shipment.assign("n2", snapshot(a="1")) == []


def test_what_no_node_uses_any_more_is_released_on_both_sides() -> None:
    shipment, table = Shipment(), SnapshotTable()
    replay(table, shipment.assign("n1", snapshot(a="1")))
    replay(table, shipment.assign("n2", snapshot(a="1")))
    replay(table, shipment.assign("n1", snapshot(a="2")))
    assert (shipment.snapshot_count, shipment.resource_count) == (2, 3)
    release = shipment.forget("n2")
    assert kinds(release) == [Kind.RELEASE]
    replay(table, release)
    assert (shipment.snapshot_count, shipment.resource_count) == (1, 2)
    assert (table.snapshot_count, table.resource_count) == (1, 2)
    replay(table, shipment.forget("n1"))
    assert (table.snapshot_count, table.resource_count) == (0, 0)
    assert shipment.forget("n1") == []


def test_a_node_forgotten_and_assigned_again_gets_everything_again() -> None:
    shipment, table = Shipment(), SnapshotTable()
    replay(table, shipment.assign("n1", snapshot(a="1")))
    replay(table, shipment.forget("n1"))
    assigned = replay(table, shipment.assign("n1", snapshot(a="1")))
    assert assigned["n1"] == snapshot(a="1")


def test_an_assignment_of_an_unknown_snapshot_is_an_error() -> None:
    with pytest.raises(WireError, match="ASSIGN"):
        SnapshotTable().apply(Frame(Kind.ASSIGN, [7, ["n1"]]))


def test_nodes_and_connections_keep_every_field_across_the_wire() -> None:
    node = Node(
        id="sidecar~1",
        cluster="c",
        metadata=MappingProxyType({"NAMESPACE": "ns", "LABELS": {"app": "x"}, "n": 1.0}),
        user_agent="envoy 1.40.0",
        locality=MappingProxyType({"zone": "z"}),
    )
    assert node_from_json(node_to_json(node)) == node
    status = TypeStatus(
        type_url=types.EXTENSION_CONFIG,
        wildcard=False,
        subscribed=("a",),
        acked_version="v",
        resources=MappingProxyType({"a": "v"}),
        rejected=MappingProxyType({}),
        last_nack=None,
        pending_nonce="3",
        responses_sent=2,
        acks=1,
        nacks=0,
    )
    info = ConnectionInfo(
        stream_id=5,
        node_id=node.id,
        cluster="c",
        metadata=node.metadata,
        user_agent=node.user_agent,
        protocol="delta",
        peer="ipv4:127.0.0.1:1",
        connected_since=datetime(2026, 1, 2, tzinfo=UTC),
        types=MappingProxyType({types.EXTENSION_CONFIG: status}),
        identity="spiffe://cluster.local/ns/ns/sa/default",
    )
    back = connection_from_json(connection_to_json(info, worker=1))
    assert back.stream_id >> 40 == 1
    assert back == dataclasses.replace(info, stream_id=back.stream_id)


def test_a_node_id_held_by_one_identity_is_refused_to_another_in_any_worker() -> None:
    claims = NodeClaims()
    assert claims.admit("n", 0, "x").first
    refused = claims.admit("n", 1, "y")
    assert not refused.admitted
    assert "connected as x" in refused.reason
    second = claims.admit("n", 1, "x")
    assert second.admitted
    assert not second.first
    assert claims.workers("n") == [0, 1]


def test_a_node_is_gone_when_the_last_worker_holding_it_lets_go() -> None:
    claims = NodeClaims()
    claims.admit("n", 0, "x")
    claims.admit("n", 1, "x")
    assert not claims.release("n", 0).last
    assert not claims.release("n", 0).held
    assert claims.release("n", 1).last
    assert claims.admit("n", 1, "y").admitted


def test_an_exited_worker_releases_all_its_nodes() -> None:
    claims = NodeClaims()
    claims.admit("a", 0, "")
    claims.admit("b", 0, "")
    claims.admit("b", 1, "")
    released = dict(claims.release_worker(0))
    assert released["a"].last
    assert not released["b"].last
    assert claims.node_ids() == ["b"]


def test_one_frame_assigns_a_snapshot_to_every_node_that_gets_it() -> None:
    shipment, table = Shipment(), SnapshotTable()
    replay(table, shipment.assign_many([("n1", snapshot(a="1")), ("n2", snapshot(a="1"))]))
    changed = shipment.assign_many(
        [("n1", snapshot(a="2")), ("n2", snapshot(a="2")), ("n3", snapshot(a="2"))]
    )
    assert kinds(changed).count(Kind.ASSIGN) == 1
    assert kinds(changed)[-1] is Kind.RELEASE  # the old snapshot, once nobody uses it
    assigned = replay(table, changed)
    assert assigned == {node: snapshot(a="2") for node in ("n1", "n2", "n3")}
    assert (table.snapshot_count, table.resource_count) == (1, 2)
