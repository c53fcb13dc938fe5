"""An :class:`~meshext.rpc.RpcServer` on loopback serving small test methods, with a
grpcio channel to it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from meshext.rpc import EOF, Limits, Method, RpcServer, ServerCall
from meshext.rpc.connection import Connection


async def echo(call: ServerCall) -> None:
    """Answers each request with itself."""
    while (request := await call.read()) is not EOF:
        await call.write(request)


async def hold(call: ServerCall) -> None:
    """Never reads; ends when the client does."""
    while not call.remote_closed:
        await asyncio.sleep(0.005)


async def wait(call: ServerCall) -> None:
    """Neither reads nor ends (until it is cancelled)."""
    await asyncio.get_running_loop().create_future()


async def sink(call: ServerCall) -> None:
    """Reads every request; answers with how many bytes they held."""
    total = 0
    while (request := await call.read()) is not EOF:
        total += len(request)
    await call.write(str(total).encode())


METHODS = {
    "/test.Echo/Echo": Method(echo, bytes),
    "/test.Hold/Hold": Method(hold, bytes),
    "/test.Sink/Sink": Method(sink, bytes),
    "/test.Wait/Wait": Method(wait, bytes),
}


@dataclass
class Served:
    server: RpcServer
    port: int
    channel: grpc.aio.Channel

    async def assert_still_serves(self) -> None:
        """A grpcio client on the same server gets its echo and an OK status."""
        call = self.channel.stream_stream("/test.Echo/Echo")()
        await call.write(b"ping")
        assert await asyncio.wait_for(call.read(), 10) == b"ping"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


@contextlib.asynccontextmanager
async def serving(
    limits: Limits,
    *,
    ssl_context: ssl.SSLContext | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> AsyncIterator[Served]:
    """The test methods served with ``limits`` on 127.0.0.1 (over TLS with
    ``ssl_context``), and a grpcio channel (with ``credentials``)."""
    server = RpcServer(METHODS, limits=limits, ssl_context=ssl_context)
    port = await server.start("127.0.0.1:0")
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    try:
        yield Served(server, port, channel)
        for conn in server.connections:
            assert_unread_counted(conn)
    finally:
        await channel.close()
        await server.stop(0)


def pending_bytes(conn: Connection) -> int:
    """Response bytes the server holds for ``conn``'s calls, waiting for window."""
    return sum(len(chunk) for call in conn.calls.values() for chunk in call.pending)


def assert_unread_counted(conn: Connection) -> None:
    """The connection's count of unread request bytes is what its calls hold."""
    held = sum(
        sum(size for _, size in call.inbox) + len(call.partial or b"")
        for call in conn.calls.values()
    )
    assert conn.inbox_bytes == held
