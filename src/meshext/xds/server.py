"""The gRPC ADS server: state-of-the-world and delta streams served from a SnapshotCache.

Each stream runs one protocol machine (:mod:`meshext.xds.protocol`), all on the
server's event loop, with as little around it as a stream needs:

* the RPC's own task reads the first request, which names the node, and waits for
  ``on_connect``; every later request is fed to the machine as it arrives (in the
  connection's read callback, :meth:`meshext.rpc.ServerCall.listen`) and the
  responses it returns are written there, with the connection's other answers to
  that read;
* once the stream has named its node it watches the node in the cache
  (:meth:`SnapshotCache.watch`); a newer snapshot schedules one callback (snapshots
  arriving in a burst are coalesced into the latest) that feeds it to the machine
  and writes what it returns, in that callback: a write is a socket write (see
  :mod:`meshext.rpc`), so a change costs no task per stream.

Responses are sent as bytes assembled from parts encoded once for every stream (see
:mod:`meshext.xds.wire`); the transport does not serialize them again.

The control plane plugs in through :class:`StreamEvents`. When a stream names its node
the server awaits ``on_connect(node)`` (the control plane computes and sets the node's
snapshot there), and answers nothing until a snapshot exists for the node. ACKs and
NACKs are reported per response, which for per-name types (extension configs) names
exactly one resource. ``on_disconnect`` comes when the last stream of a node id ends,
so a proxy reconnecting while its old stream lingers is never reported gone.

Security: with a :class:`StreamSecurity` the server listens with TLS and requires a
client certificate; when a stream names its node, the security decides from the
peer's certificate whether that identity may speak for that node. A refused stream
gets ``PERMISSION_DENIED`` before anything about the node is read or changed, and a
node id held by an open stream of one identity cannot be claimed by another. Without
one the server listens in plaintext and anyone who reaches it can claim any node.

Errors: :class:`ServerError` when the address cannot be bound; a client breaking the
protocol gets ``INVALID_ARGUMENT``; an exception in a callback is logged and the
stream carries on.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

from meshext.errors import MeshextError
from meshext.rpc import EOF, CallClosed, Method, RpcServer, RpcServerError, ServerCall
from meshext.rpc import Status as GrpcStatus
from meshext.xds.cache import SnapshotCache
from meshext.xds.protocol import (
    Ack,
    DeltaStream,
    Event,
    Nack,
    ProtocolError,
    Response,
    SotwStream,
    TypeStatus,
)
from meshext.xds.types import Node

_log = logging.getLogger(__name__)

StreamProtocol = Literal["sotw", "delta"]


class ServerError(MeshextError):
    """The ADS server could not start (a permanent error for the given address)."""


class StreamDenied(MeshextError):
    """A stream's peer may not speak for the node it named; the message says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StreamSecurity(Protocol):
    """How the server authenticates its peers and authorizes the nodes they claim."""

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS context that requires and verifies a client certificate."""
        ...

    def renew(self) -> None:
        """Called every few seconds: load a renewed serving certificate, if any."""
        ...

    def authorize(self, auth_context: Mapping[str, Sequence[bytes]], node: Node) -> str:
        """The identity of the peer (from ``auth_context``: ``x509_pem_cert``, the verified
        client certificate, as gRPC names it) if it may speak for ``node``; raises
        :class:`StreamDenied` if not."""
        ...


class StreamEvents(Protocol):
    """What the control plane learns from the ADS server.

    ``on_connect`` is awaited once per stream, when it first names its node; the
    server answers the stream only once the cache holds a snapshot for the node. It
    may refuse the stream by raising :class:`StreamDenied` (the client gets
    ``PERMISSION_DENIED``; ``on_disconnect`` follows as for any stream).
    ``on_ack``/``on_nack`` report the client's verdict on one response: its version
    (see :mod:`meshext.xds.protocol`: for per-name types the content version of its
    one resource) and the names of the resources it carried. ``on_disconnect`` is
    called when the last stream of a node id has ended.
    """

    async def on_connect(self, node: Node) -> None: ...

    def on_ack(
        self, node_id: str, type_url: str, version: str, resource_names: Sequence[str]
    ) -> None: ...

    def on_nack(
        self,
        node_id: str,
        type_url: str,
        rejected_version: str,
        resource_names: Sequence[str],
        error_detail: str,
    ) -> None: ...

    def on_disconnect(self, node_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One open ADS stream, for admin views."""

    stream_id: int
    node_id: str
    cluster: str
    metadata: Mapping[str, object]
    user_agent: str
    protocol: StreamProtocol
    peer: str
    connected_since: datetime
    types: Mapping[str, TypeStatus]
    identity: str = ""
    """The peer's identity from its certificate; empty on a plaintext server."""

    @property
    def responses_sent(self) -> int:
        return sum(status.responses_sent for status in self.types.values())


class _Counts:
    """A labelled Prometheus counter whose samples are plain integers, made into a
    metric family only when the registry is collected.

    Hand-written instead of ``prometheus_client.Counter`` because every response and
    every ACK counts once: a ``Counter`` child's increment (a lock, checks) cost as
    much as the rest of the server's handling of an ACK. Counts are kept under raw
    keys (the full type URL); ``label`` turns a key into label values at collection.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        label: Callable[[tuple[str, ...]], tuple[str, ...]],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.label = label
        self.values: dict[tuple[str, ...], int] = {}

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        summed: dict[tuple[str, ...], int] = {}
        for key, value in dict(self.values).items():
            labels = self.label(key)
            summed[labels] = summed.get(labels, 0) + value
        for labels, value in sorted(summed.items()):
            family.add_metric(labels, value)
        return [family]


def _type_label(key: tuple[str, ...]) -> tuple[str, ...]:
    return (_short(key[0]), *key[1:])


class _Metrics:
    """The server's Prometheus metrics; the per-event counters are plain integers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.responses = _Counts(
            "meshext_xds_responses", "xDS responses sent", ["type", "protocol"], _type_label
        )
        self.acks = _Counts("meshext_xds_acks", "xDS responses ACKed", ["type"], _type_label)
        self.nacks = _Counts("meshext_xds_nacks", "xDS responses NACKed", ["type"], _type_label)
        for counts in (self.responses, self.acks, self.nacks):
            registry.register(counts)
        self.streams = Gauge(
            "meshext_xds_streams", "Open ADS streams", ["protocol"], registry=registry
        )
        self.proxies = Gauge(
            "meshext_xds_connected_proxies",
            "Distinct node ids with an open ADS stream",
            registry=registry,
        )
        self.denied = Counter(
            "meshext_xds_denied_streams",
            "ADS streams refused because the peer may not speak for the node it named",
            ["reason"],
            registry=registry,
        )
        self._gauges: dict[str, Any] = {}

    def opened(self, protocol: str) -> None:
        self._gauge_child(protocol).inc()

    def closed(self, protocol: str) -> None:
        self._gauge_child(protocol).dec()

    def _gauge_child(self, protocol: str) -> Any:
        child = self._gauges.get(protocol)
        if child is None:
            child = self._gauges[protocol] = self.streams.labels(protocol)
        return child

    def sent(self, type_url: str, protocol: str) -> None:
        values = self.responses.values
        key = (type_url, protocol)
        values[key] = values.get(key, 0) + 1

    def acked(self, type_url: str) -> None:
        values = self.acks.values
        key = (type_url,)
        values[key] = values.get(key, 0) + 1

    def nacked(self, type_url: str) -> None:
        values = self.nacks.values
        key = (type_url,)
        values[key] = values.get(key, 0) + 1


class _Churn:
    """Streams naming their node and nodes leaving, logged at INFO as one line per
    :data:`_CHURN_PERIOD` at most (each stream is logged at DEBUG): a fleet of proxies
    connecting costs no log line per proxy."""

    __slots__ = ("connected", "disconnected", "timer")

    def __init__(self) -> None:
        self.connected = 0
        self.disconnected = 0
        self.timer: asyncio.TimerHandle | None = None

    def arm(self, nodes: Mapping[str, int]) -> None:
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(_CHURN_PERIOD, self.report, nodes)

    def flush(self, nodes: Mapping[str, int]) -> None:
        """Report now what is waiting for the timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.report(nodes)

    def report(self, nodes: Mapping[str, int]) -> None:
        self.timer = None
        _log.info(
            "ADS streams: %d named their node, %d nodes disconnected in the last %.0f s; "
            "%d nodes connected",
            self.connected,
            self.disconnected,
            _CHURN_PERIOD,
            len(nodes),
        )
        self.connected = self.disconnected = 0


_CHURN_PERIOD: Final = 10.0
"""Seconds between the INFO lines summing up streams connecting and nodes leaving."""


@dataclass(slots=True, eq=False)
class _Stream:
    stream_id: int
    protocol: StreamProtocol
    machine: SotwStream | DeltaStream
    peer: str
    connected_since: datetime
    context: ServerCall
    task: asyncio.Task[Any] | None
    node_id: str | None = None
    identity: str = ""
    # Whether a newer snapshot is already scheduled to be taken.
    wake_scheduled: bool = False
    unwatch: Callable[[], None] | None = None
    # Set by AdsServer.stop: the RPC's task is cancelled to end the stream cleanly.
    stopping: bool = False
    # Whether the RPC's task is awaiting StreamEvents.on_connect.
    connecting: bool = False
    closed: bool = False

    def info(self) -> ConnectionInfo | None:
        node = self.machine.node
        if node is None:
            return None
        return ConnectionInfo(
            stream_id=self.stream_id,
            node_id=node.id,
            cluster=node.cluster,
            metadata=node.metadata,
            user_agent=node.user_agent,
            protocol=self.protocol,
            peer=self.peer,
            connected_since=self.connected_since,
            types=MappingProxyType(self.machine.status()),
            identity=self.identity,
        )


class AdsServer:
    """ADS over gRPC (``StreamAggregatedResources`` and ``DeltaAggregatedResources``).

    ``registry`` receives the Prometheus metrics (a private registry when omitted,
    available as :attr:`registry`). ``reuse_port`` lets several processes listen on
    the same address (``SO_REUSEPORT``: the kernel spreads new connections among
    them); off by default, so that two servers never share a port by accident.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        events: StreamEvents,
        *,
        registry: CollectorRegistry | None = None,
        security: StreamSecurity | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.cache = cache
        self.reuse_port = reuse_port
        self.events = events
        self.security = security
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._metrics = _Metrics(self.registry)
        self._server: RpcServer | None = None
        self._streams: dict[int, _Stream] = {}
        self._node_streams: dict[str, int] = {}
        self._node_identities: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._churn = _Churn()

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on ``address`` (``host:port``, port 0 for any); returns the bound port."""
        if self._server is not None:
            raise ServerError("the ADS server is already started")
        security = self.security
        server = RpcServer(
            _methods(self),
            ssl_context=None if security is None else security.ssl_context(),
            reuse_port=self.reuse_port,
            on_housekeeping=None if security is None else security.renew,
        )
        try:
            port = await server.start(address)
        except RpcServerError as exc:
            raise ServerError(str(exc)) from exc
        self._server = server
        if self.security is None:
            _log.warning(
                "ADS server listening on %s (port %d) in PLAINTEXT: any client that reaches "
                "it can read and change the configuration of any proxy",
                address,
                port,
            )
        else:
            _log.info("ADS server listening on %s (port %d), mutual TLS", address, port)
        return port

    async def stop(self, grace: float) -> None:
        """End every stream, then stop; RPCs still running after ``grace`` are cancelled."""
        server, self._server = self._server, None
        if server is None:
            return
        for stream in list(self._streams.values()):
            stream.stopping = True
            # A stream in on_connect ends when that returns; the others are waiting
            # for a request or writing, and end now.
            if stream.task is not None and not stream.connecting:
                stream.task.cancel()
        await server.stop(grace)
        self._churn.flush(self._node_streams)

    def connections(self) -> list[ConnectionInfo]:
        """Open streams that have named their node, oldest first."""
        infos = (stream.info() for stream in self._streams.values())
        return [info for info in infos if info is not None]

    def identity_of(self, node_id: str) -> str | None:
        """The peer identity the open streams of ``node_id`` proved (set before
        ``on_connect``), or ``None`` (no such stream, or no :class:`StreamSecurity`)."""
        return self._node_identities.get(node_id)

    async def _serve(self, kind: StreamProtocol, context: ServerCall) -> None:
        """Serve one stream until the client or :meth:`stop` ends it."""
        machine: SotwStream | DeltaStream = SotwStream() if kind == "sotw" else DeltaStream()
        stream = _Stream(
            stream_id=next(self._ids),
            protocol=kind,
            machine=machine,
            peer=context.peer(),
            connected_since=datetime.now(UTC),
            context=context,
            task=asyncio.current_task(),
        )
        self._streams[stream.stream_id] = stream
        self._metrics.opened(kind)
        try:
            request = await context.read()
            if request is EOF:
                return
            try:
                # The first request must name the node (the machine refuses it if not).
                events = machine.receive_request(request)
            except ProtocolError as exc:
                await context.abort(GrpcStatus.INVALID_ARGUMENT, str(exc))
                return
            # Not kept while the stream lives (the machine keeps the node converted).
            request = None
            node = machine.node
            assert node is not None
            denied = self._authorize(stream, node, context)
            if denied is not None:
                await context.abort(GrpcStatus.PERMISSION_DENIED, denied)
                return
            stream.connecting = True
            try:
                await self._identified(stream, node)
            except StreamDenied as exc:
                self._metrics.denied.labels(exc.reason).inc()
                await context.abort(GrpcStatus.PERMISSION_DENIED, str(exc))
                return
            finally:
                stream.connecting = False
            if stream.stopping:
                return
            stream.unwatch = self.cache.watch(node.id, _stream_waker(self, stream))
            self._dispatch(stream, events)
            self._take_snapshot(stream)
            # The stream has named its node: each later request is handled as it
            # arrives, without a turn of this task; the task waits for the end.
            await context.conn.drained()
            context.listen(functools.partial(self._on_request, stream))
            await context.read()
        except asyncio.CancelledError:
            if not stream.stopping:
                raise
            # AdsServer.stop ends the stream: the RPC completes with OK.
            if stream.task is not None:
                stream.task.uncancel()
        finally:
            self._closed(stream)

    def _on_request(self, stream: _Stream, request: Any) -> None:
        """A request of a stream that has named its node (see :meth:`ServerCall.listen`)."""
        if stream.closed:
            return
        context = stream.context
        try:
            events = stream.machine.receive_request(request)
        except ProtocolError as exc:
            context.fail(GrpcStatus.INVALID_ARGUMENT, str(exc))
            return
        except Exception:
            _log.exception("stream %d: a request could not be handled", stream.stream_id)
            context.fail(GrpcStatus.UNKNOWN, "unexpected error in the server")
            return
        self._dispatch(stream, events)

    def _take_snapshot(self, stream: _Stream) -> None:
        """Feed the node's current snapshot to the stream's machine, if it is new to it."""
        snapshot = self.cache.get(stream.node_id or "")
        machine = stream.machine
        if snapshot is not None and snapshot is not machine.snapshot:
            self._dispatch(stream, machine.receive_snapshot(snapshot))

    def _snapshot_changed(self, stream: _Stream) -> None:
        """Scheduled when the cache holds a newer snapshot for the stream's node."""
        stream.wake_scheduled = False
        if stream.closed or stream.stopping:
            return
        self._take_snapshot(stream)

    def _dispatch(self, stream: _Stream, events: list[Event]) -> None:
        """Write the responses (in order) and report the verdicts among ``events``."""
        payloads: list[bytes] = []
        for event in events:
            if isinstance(event, Response):
                self._metrics.sent(event.type_url, stream.protocol)
                payloads.append(event.payload)
            else:
                self._report(stream, event)
        if not payloads or stream.closed:
            return
        try:
            if len(payloads) == 1:
                stream.context.write_nowait(payloads[0])
            else:
                stream.context.write_many_nowait(payloads)
        except CallClosed:
            # The client reset the stream; its task is being cancelled.
            stream.closed = True

    def _authorize(self, stream: _Stream, node: Node, context: ServerCall) -> str | None:
        """Why the stream may not speak for ``node``, or ``None`` (then its identity is set)."""
        if self.security is None:
            return None
        try:
            identity = self.security.authorize(context.auth_context(), node)
            holder = self._node_identities.get(node.id)
            if holder is not None and holder != identity:
                raise StreamDenied(
                    f"node {node.id!r} is connected as {holder}; {identity} may not claim it",
                    "node id held by another identity",
                )
        except StreamDenied as exc:
            self._metrics.denied.labels(exc.reason).inc()
            _log.warning("stream %d from %s refused: %s", stream.stream_id, stream.peer, exc)
            return str(exc)
        stream.identity = identity
        return None

    async def _identified(self, stream: _Stream, node: Node) -> None:
        stream.node_id = node.id
        if stream.identity:
            self._node_identities[node.id] = stream.identity
        count = self._node_streams.get(node.id, 0)
        self._node_streams[node.id] = count + 1
        if count == 0:
            self._metrics.proxies.inc()
        _log.debug(
            "stream %d from %s: node %r (%s)",
            stream.stream_id,
            stream.peer,
            node.id,
            stream.protocol,
        )
        self._churn.connected += 1
        self._churn.arm(self._node_streams)
        try:
            await self.events.on_connect(node)
        except StreamDenied:
            raise
        except Exception:
            _log.exception("on_connect failed for node %r", node.id)

    def _report(self, stream: _Stream, event: Ack | Nack) -> None:
        node_id = stream.node_id or ""
        try:
            if isinstance(event, Ack):
                self._metrics.acked(event.type_url)
                self.events.on_ack(node_id, event.type_url, event.version, event.resource_names)
            else:
                self._metrics.nacked(event.type_url)
                _log.warning(
                    "node %r rejected %s %s: %s",
                    node_id,
                    _short(event.type_url),
                    ", ".join(event.resource_names) or event.version,
                    event.error_detail,
                )
                self.events.on_nack(
                    node_id,
                    event.type_url,
                    event.version,
                    event.resource_names,
                    event.error_detail,
                )
        except Exception:
            _log.exception("event callback failed for node %r", node_id)

    def _closed(self, stream: _Stream) -> None:
        stream.closed = True
        if stream.unwatch is not None:
            stream.unwatch()
            stream.unwatch = None
        del self._streams[stream.stream_id]
        self._metrics.closed(stream.protocol)
        node_id = stream.node_id
        if node_id is None:
            return
        count = self._node_streams[node_id] - 1
        if count:
            self._node_streams[node_id] = count
            return
        del self._node_streams[node_id]
        self._node_identities.pop(node_id, None)
        self._metrics.proxies.dec()
        _log.debug("node %r disconnected", node_id)
        self._churn.disconnected += 1
        self._churn.arm(self._node_streams)
        try:
            self.events.on_disconnect(node_id)
        except Exception:
            _log.exception("on_disconnect failed for node %r", node_id)

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"AdsServer({state}, streams={len(self._streams)}, nodes={len(self._node_streams)})"


def _stream_waker(server: AdsServer, stream: _Stream) -> Callable[[], None]:
    """What the cache calls on each change of the stream's node: schedule one look."""
    loop = asyncio.get_running_loop()
    take = server._snapshot_changed

    def wake() -> None:
        if not stream.wake_scheduled:
            stream.wake_scheduled = True
            loop.call_soon(take, stream)

    return wake


_SERVICE: Final = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _methods(server: AdsServer) -> dict[str, Method]:
    """The ADS service's two methods; responses are bytes already (no serializer)."""

    async def sotw(call: ServerCall) -> None:
        await server._serve("sotw", call)

    async def delta(call: ServerCall) -> None:
        await server._serve("delta", call)

    return {
        f"/{_SERVICE}/StreamAggregatedResources": Method(
            sotw, discovery_pb2.DiscoveryRequest.FromString
        ),
        f"/{_SERVICE}/DeltaAggregatedResources": Method(
            delta, discovery_pb2.DeltaDiscoveryRequest.FromString
        ),
    }


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


__all__ = [
    "AdsServer",
    "ConnectionInfo",
    "ServerError",
    "StreamDenied",
    "StreamEvents",
    "StreamProtocol",
    "StreamSecurity",
]
