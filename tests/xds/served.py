"""An ADS server on loopback with a recording ``StreamEvents`` and a client stub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from meshext.xds.server import AdsServer, ConnectionInfo
from tests.xds.recorder import Recorder

WAIT_SECONDS = 30.0


class Harness:
    def __init__(self, server: AdsServer, recorder: Recorder, port: int) -> None:
        self.server = server
        self.port = port
        self.recorder = recorder
        self.cache = recorder.cache
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(poll(), WAIT_SECONDS)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def connection(self, node_id: str = "node-1") -> ConnectionInfo | None:
        found = [info for info in self.server.connections() if info.node_id == node_id]
        return found[-1] if found else None

    def metric(self, name: str, **labels: str) -> float:
        return self.server.registry.get_sample_value(name, labels) or 0.0


async def read(call: Any) -> Any:
    return await asyncio.wait_for(call.read(), WAIT_SECONDS)


@contextlib.asynccontextmanager
async def serving(recorder: Recorder) -> AsyncIterator[Harness]:
    """An ADS server on loopback reporting to ``recorder`` (serving its cache), and a
    client; both closed on the way out."""
    server = AdsServer(recorder.cache, recorder)
    port = await server.start()
    ready = Harness(server, recorder, port)
    try:
        yield ready
    finally:
        await ready.channel.close()
        await server.stop(0)
