"""A TCP pass-through balancer on loopback, for tests of several ``meshext serve`` replicas.

It plays the part of the layer-4 load balancer in front of the replicas: it forwards
bytes unchanged (so the proxies' mutual TLS runs end to end with the replica), to
one backend at a time. :meth:`Passthrough.switch` points new connections at another
backend and closes the open ones, which is what a proxy sees when its replica goes
away or the balancer moves it: the connection drops and the next one lands elsewhere.
Written here because the test needs to choose the moment and the target of each move.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Passthrough:
    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.port = 0
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def switch(self, backend: int) -> None:
        """Send new connections to ``backend`` and close every open one."""
        self.backend = backend
        writers, self._open = list(self._open), set()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.switch(self.backend)
        if self._server is not None:
            await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.backend
            )
        except OSError:
            writer.close()
            return
        pair = {writer, upstream_writer}
        self._open |= pair
        try:
            await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
        finally:
            for end in pair:
                self._open.discard(end)
                end.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def passthrough(backend: int) -> AsyncIterator[Passthrough]:
    balancer = Passthrough(backend)
    await balancer.start()
    try:
        yield balancer
    finally:
        await balancer.stop()
