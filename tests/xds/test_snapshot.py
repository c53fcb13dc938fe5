"""Snapshots: content-hash versions, naming and type checks, consistency."""

from __future__ import annotations

import subprocess
import sys

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import struct_pb2

from meshext.xds import types
from meshext.xds.snapshot import InconsistentSnapshotError, Snapshot, SnapshotError, pack
from tests.xds import resources
from tests.xds.builders import resource, snapshot

LDS, CDS, ECDS = types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG

SPEC = {LDS: {"a": "1", "b": "2"}, CDS: {"c": "1"}, ECDS: {"x": "1"}}

VERSIONS_SCRIPT = """
from tests.xds.builders import snapshot
from meshext.xds import types
spec = {types.LISTENER: {"a": "1", "b": "2"}, types.CLUSTER: {"c": "1"},
        types.EXTENSION_CONFIG: {"x": "1"}}
current = snapshot(spec)
print(*(current.version(t) for t in (types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG)))
"""


def test_identical_content_gives_identical_versions_in_another_process() -> None:
    here = snapshot(SPEC)
    output = subprocess.run(
        [sys.executable, "-c", VERSIONS_SCRIPT], check=True, capture_output=True, text=True
    ).stdout.split()
    assert output == [here.version(LDS), here.version(CDS), here.version(ECDS)]


def test_a_change_alters_the_versions_of_its_resource_and_type_only() -> None:
    before = snapshot(SPEC)
    after = snapshot({**SPEC, LDS: {"a": "1", "b": "3"}})
    assert before != after
    assert before.version(LDS) != after.version(LDS)
    assert before.resource_version(LDS, "a") == after.resource_version(LDS, "a")
    assert before.resource_version(LDS, "b") != after.resource_version(LDS, "b")
    assert (before.version(CDS), before.version(ECDS)) == (after.version(CDS), after.version(ECDS))


def test_the_same_content_under_another_name_is_another_resource_set() -> None:
    assert snapshot({LDS: {"a": "1"}}).version(LDS) != snapshot({LDS: {"b": "1"}}).version(LDS)


def test_a_type_left_out_equals_an_empty_one() -> None:
    empty = snapshot({})
    assert empty == snapshot({LDS: {}, ECDS: {}})
    assert empty.version(LDS) == snapshot({LDS: {}}).version(LDS)
    assert len(empty.resources(CDS)) == 0


def test_a_message_of_another_type_is_refused() -> None:
    with pytest.raises(SnapshotError, match="a Cluster message cannot be a Listener resource"):
        Snapshot.build({LDS: [resource(CDS, "c", "1")]})


def test_two_resources_of_one_name_are_refused() -> None:
    with pytest.raises(SnapshotError, match="two Listener resources named 'a'"):
        Snapshot.build({LDS: [resource(LDS, "a", "1"), resource(LDS, "a", "2")]})


def test_a_resource_without_a_name_is_refused() -> None:
    with pytest.raises(SnapshotError, match="has no name"):
        Snapshot.build({LDS: [listener_pb2.Listener()]})


def test_endpoints_are_named_by_their_cluster_name() -> None:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name="backend")
    built = Snapshot.build({types.ENDPOINT: [assignment]})
    assert list(built.resources(types.ENDPOINT)) == ["backend"]


def test_resources_are_listed_by_name_and_packed_as_they_were_hashed() -> None:
    built = snapshot({LDS: {"b": "1", "a": "1"}})
    listed = built.resources(LDS)
    assert list(listed) == ["a", "b"]
    packed = listed.resources["a"].packed
    assert packed.type_url == LDS
    assert packed.value == resource(LDS, "a", "1").SerializeToString(deterministic=True)


def test_pack_serializes_maps_the_same_whatever_their_insertion_order() -> None:
    forward, backward = struct_pb2.Struct(), struct_pb2.Struct()
    keys = [f"key-{index}" for index in range(50)]
    for key in keys:
        forward[key] = key
    for key in reversed(keys):
        backward[key] = key
    assert pack(forward) == pack(backward)


def test_a_listener_whose_filter_needs_a_missing_extension_config_is_inconsistent() -> None:
    listener = resources.listener("web", 8080, ["ext-a", "ext-b"])
    built = Snapshot.build({LDS: [listener], ECDS: [resources.header_filter("ext-a", "x-a", "1")]})
    assert built.consistency_errors() == [
        "listener 'web' needs TypedExtensionConfig 'ext-b', which is missing"
    ]
    with pytest.raises(InconsistentSnapshotError, match="ext-b"):
        built.check_consistency()


def test_a_filter_with_a_default_applied_without_warming_needs_no_extension_config() -> None:
    listener = resources.listener("web", 8080, ["ext-a"])
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    discovery = hcm.http_filters[0].config_discovery
    discovery.default_config.CopyFrom(resources.header_filter("d", "x", "y").typed_config)
    discovery.apply_default_config_without_warming = True
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(pack(hcm))
    assert Snapshot.build({LDS: [listener]}).consistency_errors() == []


def test_a_listener_using_rds_over_ads_needs_its_route_configuration() -> None:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="web")
    hcm.rds.route_config_name = "routes"
    hcm.rds.config_source.ads.SetInParent()
    listener = listener_pb2.Listener(name="web")
    listener.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
    )
    assert Snapshot.build({LDS: [listener]}).consistency_errors() == [
        "listener 'web' needs RouteConfiguration 'routes', which is missing"
    ]


def test_a_cluster_fetching_endpoints_over_ads_needs_them() -> None:
    cluster = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    built = Snapshot.build({CDS: [cluster]})
    assert built.consistency_errors() == [
        "cluster 'backend' needs ClusterLoadAssignment 'backend', which is missing"
    ]
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name="backend")
    assert Snapshot.build({CDS: [cluster], types.ENDPOINT: [assignment]}).consistency_errors() == []


def test_the_test_snapshot_with_its_extension_configs_is_consistent() -> None:
    assert resources.snapshot(8080, {"a": "1", "b": "2"}).consistency_errors() == []


def test_repr_shows_counts_and_versions_per_type() -> None:
    built = snapshot({LDS: {"a": "1"}, CDS: {"c": "1", "d": "1"}})
    assert repr(built) == (
        f"Snapshot(Cluster: 2@{built.version(CDS)}, Listener: 1@{built.version(LDS)})"
    )
