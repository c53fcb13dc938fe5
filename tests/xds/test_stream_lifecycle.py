"""How ADS streams start, learn of snapshots and end: nothing is left behind."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from meshext.xds import types
from meshext.xds.cache import SnapshotCache
from tests.xds.builders import contents, delta_request, snapshot, sotw_request
from tests.xds.recorder import WAIT_SECONDS, Recorder
from tests.xds.served import Harness, read, serving

LDS, ECDS = types.LISTENER, types.EXTENSION_CONFIG


async def one_stream(harness: Harness, index: int) -> None:
    """Open a stream, get the listener, ACK it, then end it one of three ways."""
    node = f"node-{index}"
    delta = index % 2 == 1
    if delta:
        call = harness.stub.DeltaAggregatedResources()
        await call.write(delta_request(LDS, node=node))
    else:
        call = harness.stub.StreamAggregatedResources()
        await call.write(sotw_request(LDS, node=node))
    response = await read(call)
    assert contents(response) == {"a": "1"}
    if delta:
        await call.write(delta_request(LDS, nonce=response.nonce, node=node))
    else:
        await call.write(
            sotw_request(LDS, version=response.version_info, nonce=response.nonce, node=node)
        )
    ending = index % 3
    if ending == 0:
        call.cancel()
    elif ending == 1:
        await call.done_writing()
        assert await asyncio.wait_for(call.code(), WAIT_SECONDS) == grpc.StatusCode.OK
    else:
        # A newer snapshot on its way while the client goes away.
        harness.cache.set_snapshot(node, snapshot({LDS: {"a": str(index)}}))
        call.cancel()


async def test_a_thousand_streams_opened_and_closed_leave_no_task_waiter_or_stream_behind(
    harness: Harness,
) -> None:
    count = 1000
    for index in range(count):
        harness.recorder.snapshots[f"node-{index}"] = snapshot({LDS: {"a": "1"}})
    # gRPC starts a task of its own with the first call: count from the second batch.
    tasks_before = 0
    for first in range(0, count, 50):
        await asyncio.gather(*(one_stream(harness, index) for index in range(first, first + 50)))
        if not first:
            await harness.recorder.wait_for(
                lambda: len(harness.recorder.disconnected) == 50, "disconnects"
            )
            await asyncio.sleep(0.1)
            tasks_before = len(asyncio.all_tasks())
    await harness.recorder.wait_for(
        lambda: len(harness.recorder.disconnected) == count, "every disconnect"
    )
    assert sorted(harness.recorder.disconnected) == sorted(f"node-{i}" for i in range(count))
    assert harness.server.connections() == []
    assert repr(harness.server) == "AdsServer(serving, streams=0, nodes=0)"
    assert repr(harness.cache) == f"SnapshotCache(nodes={count}, waiting=0)"
    for protocol in ("sotw", "delta"):
        value = harness.server.registry.get_sample_value(
            "meshext_xds_streams", {"protocol": protocol}
        )
        assert value == 0
    assert harness.server.registry.get_sample_value("meshext_xds_connected_proxies") == 0
    # Polled here rather than through wait_for, which would add a task of its own.
    for _ in range(int(WAIT_SECONDS * 10)):
        if len(asyncio.all_tasks()) <= tasks_before:
            break
        await asyncio.sleep(0.1)
    assert len(asyncio.all_tasks()) <= tasks_before, asyncio.all_tasks()


async def test_snapshots_published_in_a_burst_reach_the_stream_as_the_latest_only(
    harness: Harness,
) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({ECDS: {"x": "0"}})
    call = harness.stub.StreamAggregatedResources()
    await call.write(sotw_request(ECDS, ["x"]))
    first = await read(call)
    await call.write(sotw_request(ECDS, ["x"], version=first.version_info, nonce=first.nonce))
    await harness.recorder.wait_for(lambda: harness.recorder.acks != [], "the first ACK")
    for value in ("1", "2", "3"):
        harness.cache.set_snapshot("node-1", snapshot({ECDS: {"x": value}}))
    latest = await read(call)
    assert contents(latest) == {"x": "3"}
    await call.write(sotw_request(ECDS, ["x"], version=latest.version_info, nonce=latest.nonce))
    await harness.recorder.wait_for(lambda: len(harness.recorder.acks) == 2, "the second ACK")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call.read(), 0.3)
    info = harness.server.connections()[0]
    assert info.types[ECDS].responses_sent == 2
    call.cancel()


async def test_a_change_reaches_a_stream_waiting_for_its_next_request(harness: Harness) -> None:
    harness.recorder.snapshots["node-1"] = snapshot({LDS: {"a": "1"}})
    call = harness.stub.DeltaAggregatedResources()
    await call.write(delta_request(LDS))
    first = await read(call)
    await call.write(delta_request(LDS, nonce=first.nonce))
    await harness.recorder.wait_for(lambda: harness.recorder.acks != [], "the ACK")
    harness.cache.set_snapshot("node-1", snapshot({LDS: {"a": "2"}}))
    changed = await read(call)
    assert contents(changed) == {"a": "2"}
    assert changed.nonce != first.nonce
    call.cancel()


async def test_stop_ends_streams_that_have_responses_still_to_write() -> None:
    recorder = Recorder(SnapshotCache())
    recorder.snapshots["node-1"] = snapshot({ECDS: {"x": "0"}})
    async with serving(recorder) as served:
        call = served.stub.StreamAggregatedResources()
        await call.write(sotw_request(ECDS, ["x"]))
        first = await read(call)
        await call.write(sotw_request(ECDS, ["x"], version=first.version_info, nonce=first.nonce))
        await recorder.wait_for(lambda: recorder.acks != [], "the ACK")
        served.cache.set_snapshot("node-1", snapshot({ECDS: {"x": "1"}}))
        await served.server.stop(5)
        assert await asyncio.wait_for(call.code(), WAIT_SECONDS) == grpc.StatusCode.OK
    assert recorder.disconnected == ["node-1"]
    assert repr(served.server) == "AdsServer(stopped, streams=0, nodes=0)"
    assert repr(served.cache) == "SnapshotCache(nodes=1, waiting=0)"


class SlowConnect(Recorder):
    """on_connect waits until ``release`` is set, and notes whether it got to finish."""

    def __init__(self, cache: SnapshotCache) -> None:
        super().__init__(cache)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = False

    async def on_connect(self, node: Any) -> None:
        self.entered.set()
        await self.release.wait()
        await super().on_connect(node)
        self.finished = True


async def test_stop_lets_a_running_on_connect_finish_before_ending_its_stream() -> None:
    events = SlowConnect(SnapshotCache())
    async with serving(events) as served:
        call = served.stub.StreamAggregatedResources()
        await call.write(sotw_request(LDS))
        await asyncio.wait_for(events.entered.wait(), WAIT_SECONDS)
        stopping = asyncio.create_task(served.server.stop(5))
        await asyncio.sleep(0.1)
        events.release.set()
        await asyncio.wait_for(stopping, WAIT_SECONDS)
        assert await asyncio.wait_for(call.code(), WAIT_SECONDS) == grpc.StatusCode.OK
    assert events.finished
    assert events.disconnected == ["node-1"]
    assert repr(served.cache) == "SnapshotCache(nodes=0, waiting=0)"
