"""One xDS worker process, driven over its socket by the test as the main process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshext.server.workers.channel import BatchedWriter, read_frame
from meshext.server.workers.process import WorkerSettings, _Worker, command
from meshext.server.workers.shipping import Shipment
from meshext.server.workers.wire import Frame, FrameBuffer, Kind, encode
from meshext.xds import types
from meshext.xds.snapshot import Snapshot
from tests.xds.builders import sotw_request

WAIT_SECONDS = 30.0


@dataclass
class Worker:
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    port: int

    async def next(self, kind: Kind) -> Frame:
        """The next frame of ``kind`` (metrics reports are skipped)."""
        while True:
            frame = await asyncio.wait_for(read_frame(self.reader), WAIT_SECONDS)
            assert frame is not None, "the worker closed its socket"
            if frame.kind is kind:
                return frame
            assert frame.kind is Kind.METRICS, frame

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    settings = WorkerSettings(index=0, xds_address="127.0.0.1:0", ca=None)
    process = await asyncio.create_subprocess_exec(
        *command(settings, theirs.fileno()), pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
    )
    theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    ready = await asyncio.wait_for(read_frame(reader), WAIT_SECONDS)
    assert ready is not None
    assert ready.kind is Kind.READY
    try:
        yield Worker(process, reader, writer, int(ready.header[0]))
    finally:
        writer.close()
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def clusters(*names: str) -> Snapshot:
    return Snapshot.build({types.CLUSTER: [cluster_pb2.Cluster(name=n) for n in names]})


async def test_a_node_is_answered_after_its_verdict_with_the_snapshot_shipped_to_it(
    worker: Worker,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(sotw_request(types.CLUSTER))
        ((request, node, identity),) = (await worker.next(Kind.CONNECT)).header
        assert (node["id"], identity) == ("node-1", "")
        worker.send(
            *Shipment().assign("node-1", clusters("a", "b")),
            encode(Kind.VERDICT, [[request, True, ""]]),
        )
        response: discovery_pb2.DiscoveryResponse = await asyncio.wait_for(
            call.read(), WAIT_SECONDS
        )
        assert len(response.resources) == 2
        await call.write(
            sotw_request(types.CLUSTER, version=response.version_info, nonce=response.nonce)
        )
        ((type_url, _version, _names, (node_id,)),) = (await worker.next(Kind.ACK)).header
        assert (node_id, type_url) == ("node-1", types.CLUSTER)
        call.cancel()
        assert (await worker.next(Kind.DISCONNECT)).header == ["node-1"]


async def test_a_stream_the_main_process_refuses_gets_permission_denied(worker: Worker) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(sotw_request(types.CLUSTER))
        request = (await worker.next(Kind.CONNECT)).header[0][0]
        worker.send(encode(Kind.VERDICT, [[request, False, "held by someone else"]]))
        assert (
            await asyncio.wait_for(call.code(), WAIT_SECONDS) == grpc.StatusCode.PERMISSION_DENIED
        )
        assert "held by someone else" in await call.details()


async def test_the_open_streams_are_reported_when_asked(worker: Worker) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(sotw_request(types.CLUSTER))
        request = (await worker.next(Kind.CONNECT)).header[0][0]
        worker.send(*Shipment().assign("node-1", clusters("a")))
        worker.send(encode(Kind.VERDICT, [[request, True, ""]]))
        await asyncio.wait_for(call.read(), WAIT_SECONDS)
        worker.send(encode(Kind.QUERY, [5]))
        answer, connections = (await worker.next(Kind.CONNECTIONS)).header
        assert answer == 5
        assert [c[1] for c in connections] == ["node-1"]
        call.cancel()


async def test_a_worker_exits_when_the_main_process_goes_away(worker: Worker) -> None:
    worker.writer.close()
    assert await asyncio.wait_for(worker.process.wait(), WAIT_SECONDS) == 0


class _Collected:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def send(self, frames: bytes | list[bytes]) -> None:
        self.data.extend([frames] if isinstance(frames, bytes) else frames)


async def test_a_nodes_acks_reach_the_main_process_in_the_order_it_sent_them() -> None:
    worker = _Worker(WorkerSettings(index=0, xds_address="127.0.0.1:0", ca=None))
    collected = _Collected()
    worker.writer = cast(BatchedWriter, collected)
    worker.on_ack("b", types.CLUSTER, "v2", ["c"])
    worker.on_ack("a", types.CLUSTER, "v1", ["c"])
    worker.on_ack("a", types.CLUSTER, "v2", ["c"])
    worker.on_ack("c", types.CLUSTER, "v2", ["c"])
    await asyncio.sleep(0)
    frames = list(FrameBuffer().feed(b"".join(collected.data)))
    assert {frame.kind for frame in frames} == {Kind.ACK}
    acks = [
        (node_id, version)
        for frame in frames
        for _type_url, version, _names, node_ids in frame.header
        for node_id in node_ids
    ]
    assert acks.index(("a", "v1")) < acks.index(("a", "v2"))
    assert sorted(acks) == [("a", "v1"), ("a", "v2"), ("b", "v2"), ("c", "v2")]
    assert len(frames) == 2  # grouped, except for the node's second ACK
