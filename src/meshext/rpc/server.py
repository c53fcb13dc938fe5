"""A gRPC server for bidirectional streaming methods, on HTTP/2 over asyncio.

meshext serves one kind of RPC: ADS, long-lived streams to thousands of proxies
where every configuration change sends the same bytes to many of them. grpcio spent
most of the time of such a change in its own layers (a read and a write per proxy
through its Python wrappers and core threads) and about 36 KiB of memory per
connection; this server does the same work as one socket write and one frame parse
per proxy, with a few hundred bytes of state per connection. It implements what
gRPC's HTTP/2 protocol needs for streaming calls (RFC 9113 framing, HPACK through
the ``hpack`` library, flow control, trailers, keepalive, GOAWAY) and nothing else:
no compression (calls that send compressed messages get ``UNIMPLEMENTED``), no
unary shortcuts, no server push.

With an :class:`ssl.SSLContext` the server speaks TLS (ALPN ``h2``); the context
decides whether client certificates are required. ``reuse_port`` lets several
processes listen on one address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from meshext.errors import MeshextError
from meshext.rpc.call import CallAborted, ServerCall
from meshext.rpc.connection import Connection, Limits
from meshext.rpc.status import Status

_log = logging.getLogger(__name__)

HOUSEKEEPING_PERIOD: Final = 10.0
"""Seconds between keepalive checks; also the period of the control-frame budget."""


class RpcServerError(MeshextError):
    """The server could not listen on the address it was given."""


Handler = Callable[[ServerCall], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Method:
    """A streaming method: its handler and how its requests are parsed."""

    handler: Handler
    deserialize: Callable[[bytes], Any]


@dataclass(slots=True)
class RpcServer:
    """Serves ``methods`` (keyed by path, ``/package.Service/Method``)."""

    methods: Mapping[str, Method]
    ssl_context: Any = None
    reuse_port: bool = False
    limits: Limits = field(default_factory=Limits)
    on_housekeeping: Callable[[], None] | None = None
    """Called every housekeeping period (to renew the TLS certificate, for example)."""
    connections: set[Connection] = field(default_factory=set)
    stopping: bool = False
    _server: asyncio.AbstractServer | None = None
    _housekeeper: asyncio.Task[None] | None = None

    async def start(self, address: str) -> int:
        """Listen on ``address`` (``host:port``, ``[v6]:port``, port 0 for any); returns
        the bound port."""
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: Connection(self),
                host,
                port,
                ssl=self.ssl_context,
                reuse_port=self.reuse_port or None,
                backlog=4096,
                ssl_handshake_timeout=10.0 if self.ssl_context is not None else None,
            )
        except (OSError, ValueError) as exc:
            raise RpcServerError(f"cannot listen on {address}: {exc}") from exc
        self._server = server
        self._housekeeper = loop.create_task(self._housekeep())
        sockets = server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def run_call(self, call: ServerCall, handler: Handler) -> None:
        conn = call.conn
        try:
            await handler(call)
        except CallAborted:
            return
        except asyncio.CancelledError:
            if not call.reset and not conn.closed:
                conn.end_call(call, Status.CANCELLED, "the server ended the call")
            return
        except Exception:
            _log.exception("%s stream %d: handler failed", conn.peer, call.stream_id)
            conn.end_call(call, Status.UNKNOWN, "unexpected error in the server")
            return
        conn.end_call(call, Status.OK)

    async def stop(self, grace: float) -> None:
        """Accept nothing new, tell every client to go away, and give open calls
        ``grace`` seconds to end before their connections are closed."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping = True
        server.close()
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for conn in list(self.connections):
            conn.go_away()
        tasks = [
            call.task
            for conn in self.connections
            for call in conn.calls.values()
            if call.task is not None and not call.task.done()
        ]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        for conn in list(self.connections):
            conn.close()
        await asyncio.sleep(0)
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()

    async def _housekeep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HOUSEKEEPING_PERIOD)
            now = loop.time()
            for conn in list(self.connections):
                conn.housekeeping(now)
            if self.on_housekeeping is not None:
                try:
                    self.on_housekeeping()
                except Exception:
                    _log.exception("housekeeping failed")


def parse_address(address: str) -> tuple[str, int]:
    """``host`` and ``port`` of ``host:port`` or ``[v6]:port``."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise RpcServerError(f"cannot listen on {address}: not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65535:
        raise RpcServerError(f"cannot listen on {address}: port out of range")
    return host, port


__all__ = ["HOUSEKEEPING_PERIOD", "Method", "RpcServer", "RpcServerError", "parse_address"]
