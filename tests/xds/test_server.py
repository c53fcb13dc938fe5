"""The gRPC ADS server, driven by a Python gRPC client on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
import pytest

from meshext.xds import types
from meshext.xds.cache import SnapshotCache
from meshext.xds.server import AdsServer, ServerError, StreamDenied
from meshext.xds.types import Node
from tests.xds.builders import contents, delta_request, snapshot, sotw_request
from tests.xds.recorder import Recorder
from tests.xds.served import WAIT_SECONDS, Harness, read, serving

LDS, CDS, ECDS = types.LISTENER, types.CLUSTER, types.EXTENSION_CONFIG


async def test_a_stream_is_answered_only_once_its_node_has_a_snapshot(harness: Harness) -> None:
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(CDS))
    await harness.until(lambda: harness.recorder.connected != [], "on_connect")

    def cds_seen() -> bool:
        info = harness.connection()
        return info is not None and CDS in info.types

    await harness.until(cds_seen, "the CDS request to be processed")
    info = harness.connection()
    assert info is not None
    assert info.responses_sent == 0
    harness.cache.set_snapshot("node-1", snapshot({CDS: {"c": "1"}}))
    response = await read(call)
    assert contents(response) == {"c": "1"}
    call.cancel()


async def test_on_connect_sets_the_snapshot_that_answers_the_first_request(
    harness: Harness,
) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({LDS: {"a": "1"}})
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(LDS))
    response = await read(call)
    assert contents(response) == {"a": "1"}
    assert [node.id for node in harness.recorder.connected] == ["node-1"]
    call.cancel()


async def test_acks_and_nacks_reach_the_stream_events(harness: Harness) -> None:
    current = snapshot({ECDS: {"x": "1", "y": "1"}})
    harness.recorder.snapshots["node-1"] = current
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(ECDS, ["x", "y"]))
    first = await read(call)
    await call.write(sotw_request(ECDS, ["x", "y"], version=first.version_info, nonce=first.nonce))
    second = await read(call)
    await call.write(
        sotw_request(
            ECDS, ["x", "y"], version=first.version_info, nonce=second.nonce, error="bad y"
        )
    )
    await harness.recorder.wait_for(lambda: harness.recorder.nacks != [], "the NACK")
    x_version = current.resource_version(ECDS, "x")
    y_version = current.resource_version(ECDS, "y")
    assert [(a.type_url, a.version, a.resource_names) for a in harness.recorder.acks] == [
        (ECDS, x_version, ("x",))
    ]
    [nack] = harness.recorder.nacks
    assert (nack.node_id, nack.version, nack.resource_names, nack.error_detail) == (
        "node-1",
        y_version,
        ("y",),
        "bad y",
    )
    info = harness.connection()
    assert info is not None
    assert info.types[ECDS].last_nack == "bad y"
    assert dict(info.types[ECDS].rejected) == {"y": "bad y"}
    call.cancel()


async def test_delta_streams_are_served_too(harness: Harness) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({CDS: {"c": "1"}, ECDS: {"x": "1"}})
    call = harness.stub.DeltaAggregatedResources()
    await call.write(delta_request(CDS))
    clusters = await read(call)
    assert contents(clusters) == {"c": "1"}
    await call.write(delta_request(CDS, nonce=clusters.nonce, node=None))
    await call.write(delta_request(ECDS, ["x"], node=None))
    configs = await read(call)
    assert contents(configs) == {"x": "1"}
    await harness.recorder.wait_for(lambda: len(harness.recorder.acks) == 1, "the CDS ACK")
    info = harness.connection()
    assert info is not None
    assert info.protocol == "delta"
    call.cancel()


async def test_connections_show_node_metadata_protocol_and_acked_versions(
    harness: Harness,
) -> None:
    current = snapshot({LDS: {"a": "1"}})
    harness.recorder.snapshots["node-1"] = current
    call = harness.stub.StreamAggregatedResources()
    request = sotw_request(LDS)
    request.node.cluster = "web"
    request.node.metadata["NAMESPACE"] = "shop"
    request.node.user_agent_name = "envoy"
    request.node.user_agent_version = "1.40.0"
    await call.write(request)
    response = await read(call)
    await call.write(sotw_request(LDS, version=response.version_info, nonce=response.nonce))
    await harness.recorder.wait_for(lambda: harness.recorder.acks != [], "the ACK")
    info = harness.connection()
    assert info is not None
    assert (info.node_id, info.cluster, dict(info.metadata), info.user_agent, info.protocol) == (
        "node-1",
        "web",
        {"NAMESPACE": "shop"},
        "envoy 1.40.0",
        "sotw",
    )
    status = info.types[LDS]
    assert status.acked_version == current.version(LDS)
    assert dict(status.resources) == dict(current.resources(LDS).versions)
    assert (status.wildcard, status.last_nack, status.pending_nonce) == (True, None, None)
    assert info.connected_since.tzinfo is not None
    call.cancel()


async def test_overlapping_streams_of_one_node_disconnect_it_only_after_the_last(
    harness: Harness,
) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({LDS: {"a": "1"}})
    old = harness.stub.StreamAggregatedResources()
    await old.write(sotw_request(LDS))
    await read(old)
    new = harness.stub.StreamAggregatedResources()
    await new.write(sotw_request(LDS))
    response = await read(new)
    await new.write(sotw_request(LDS, version=response.version_info, nonce=response.nonce))
    assert len(harness.server.connections()) == 2
    assert harness.metric("meshext_xds_connected_proxies") == 1
    old.cancel()
    await harness.until(lambda: len(harness.server.connections()) == 1, "the old stream to end")
    assert harness.recorder.disconnected == []
    harness.cache.set_snapshot("node-1", snapshot({LDS: {"a": "2"}}))
    assert contents(await read(new)) == {"a": "2"}
    new.cancel()
    await harness.recorder.wait_for(lambda: harness.recorder.disconnected != [], "disconnect")
    assert harness.recorder.disconnected == ["node-1"]
    assert harness.metric("meshext_xds_connected_proxies") == 0


async def test_a_cancelled_client_leaves_no_stream_behind(harness: Harness) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({LDS: {"a": "1"}})
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(LDS))
    await read(call)
    call.cancel()
    await harness.recorder.wait_for(lambda: harness.recorder.disconnected != [], "disconnect")
    assert harness.server.connections() == []
    assert harness.metric("meshext_xds_streams", protocol="sotw") == 0
    assert repr(harness.cache) == "SnapshotCache(nodes=1, waiting=0)"


async def test_a_client_closing_its_side_ends_the_stream(harness: Harness) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({LDS: {"a": "1"}})
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(LDS))
    await read(call)
    await call.done_writing()
    assert await asyncio.wait_for(call.code(), WAIT_SECONDS) == grpc.StatusCode.OK
    await harness.recorder.wait_for(lambda: harness.recorder.disconnected != [], "disconnect")


async def test_a_first_request_without_node_is_refused_as_invalid(harness: Harness) -> None:
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(LDS, node=None))
    assert await asyncio.wait_for(call.code(), WAIT_SECONDS) == grpc.StatusCode.INVALID_ARGUMENT
    assert "node.id" in await call.details()
    assert harness.recorder.connected == []


async def test_stop_ends_every_stream_and_reports_the_disconnects() -> None:
    recorder = Recorder(SnapshotCache())
    recorder.snapshots["node-1"] = snapshot({})
    async with serving(recorder) as served:
        call = served.stub.StreamAggregatedResources()
        await call.write(sotw_request(LDS))
        await read(call)
        await served.server.stop(5)
        assert await asyncio.wait_for(call.code(), WAIT_SECONDS) == grpc.StatusCode.OK
    assert recorder.disconnected == ["node-1"]
    assert served.server.connections() == []


async def test_metrics_count_responses_acks_and_nacks_per_type(harness: Harness) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({LDS: {"a": "1"}, CDS: {"c": "1"}})
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(LDS))
    listeners = await read(call)
    await call.write(sotw_request(CDS))
    clusters = await read(call)
    await call.write(sotw_request(LDS, nonce=listeners.nonce, version=listeners.version_info))
    await call.write(sotw_request(CDS, nonce=clusters.nonce, error="no"))
    await harness.recorder.wait_for(lambda: harness.recorder.nacks != [], "the NACK")
    assert harness.metric("meshext_xds_responses_total", type="Listener", protocol="sotw") == 1
    assert harness.metric("meshext_xds_responses_total", type="Cluster", protocol="sotw") == 1
    assert harness.metric("meshext_xds_acks_total", type="Listener") == 1
    assert harness.metric("meshext_xds_nacks_total", type="Cluster") == 1
    assert harness.metric("meshext_xds_streams", protocol="sotw") == 1
    call.cancel()


class Failing(Recorder):
    def on_ack(
        self, node_id: str, type_url: str, version: str, resource_names: Sequence[str]
    ) -> None:
        super().on_ack(node_id, type_url, version, resource_names)
        raise RuntimeError("control plane bug")


async def test_a_failing_callback_does_not_break_the_stream() -> None:
    recorder = Failing(SnapshotCache())
    recorder.snapshots["node-1"] = snapshot({ECDS: {"x": "1", "y": "1"}})
    async with serving(recorder) as served:
        call = served.stub.StreamAggregatedResources()
        await call.write(sotw_request(ECDS, ["x", "y"]))
        first = await read(call)
        await call.write(
            sotw_request(ECDS, ["x", "y"], version=first.version_info, nonce=first.nonce)
        )
        assert contents(await read(call)) == {"y": "1"}
        call.cancel()


async def test_starting_on_a_port_in_use_is_a_server_error() -> None:
    cache = SnapshotCache()
    first = AdsServer(cache, Recorder(cache))
    bound = await first.start()
    try:
        second = AdsServer(cache, Recorder(cache))
        with pytest.raises(ServerError, match="cannot listen"):
            await second.start(f"127.0.0.1:{bound}")
    finally:
        await first.stop(0)


class Refusing(Recorder):
    async def on_connect(self, node: Node) -> None:
        await super().on_connect(node)
        raise StreamDenied(f"node {node.id!r} is not welcome", "refused by the control plane")


async def test_on_connect_may_refuse_a_stream_with_permission_denied() -> None:
    recorder = Refusing(SnapshotCache())
    recorder.snapshots["node-1"] = snapshot({LDS: {"a": "1"}})
    async with serving(recorder) as served:
        call = served.stub.StreamAggregatedResources()
        await call.write(sotw_request(LDS))
        code = await asyncio.wait_for(call.code(), WAIT_SECONDS)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "not welcome" in await call.details()
        await recorder.wait_for(lambda: recorder.disconnected == ["node-1"], "the disconnect")
        assert served.server.connections() == []
        denied = served.server.registry.get_sample_value(
            "meshext_xds_denied_streams_total", {"reason": "refused by the control plane"}
        )
        assert denied == 1.0


async def test_streams_coming_and_going_are_summed_up_in_one_info_line(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshext.xds.server")
    for node_id in ("node-1", "node-2", "node-3"):
        harness.recorder.snapshots[node_id] = snapshot({LDS: {"a": "1"}})
    calls = []
    for node_id in ("node-1", "node-2", "node-3"):
        call = harness.stub.StreamAggregatedResources()
        await call.write(sotw_request(LDS, node=node_id))
        await read(call)
        calls.append(call)
    for call in calls:
        call.cancel()
    await harness.recorder.wait_for(lambda: len(harness.recorder.disconnected) == 3, "disconnects")
    await harness.server.stop(0)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [
        "ADS streams: 3 named their node, 3 nodes disconnected in the last 10 s; 0 nodes connected"
    ]
