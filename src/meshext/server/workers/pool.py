"""xDS worker processes run by the main process of ``meshext serve --xds-workers N``.

The main process keeps configuration, images, planning, generation, status and the
admin API; ``N`` worker processes (:mod:`meshext.server.workers.process`) hold the
proxies' ADS streams on the same address, so TLS handshakes, protocol state machines
and response serialization run on other cores. :class:`WorkerPool` starts them,
restarts one that exits (its proxies reconnect, to any worker: Envoy retries), and
stands in for the in-process :class:`~meshext.xds.server.AdsServer` towards the admin
API (open streams, metrics) and the control plane (its ``StreamEvents``).

Snapshots: the control plane publishes into a :class:`ShippingSnapshotCache`, which
forwards each changed snapshot to the workers holding a stream of that node, as
reference-counted definitions (:mod:`meshext.server.workers.shipping`).

Node ids: the main process admits each stream (:mod:`meshext.server.workers.claims`)
before its node gets an answer, so one node id is never served to two identities,
and the control plane hears ``on_connect`` after it (it sets the node's snapshot,
shipped before the admission) and ``on_disconnect`` when no worker holds the node.

The xDS port is reserved by the main process (bound with ``SO_REUSEPORT``, never
listening), after checking nobody else holds it: workers restarting can always bind
it again, and nothing outside this process tree (same user) can join it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from meshext.envoy.node import HostPort
from meshext.identity.authority import CaSettings
from meshext.server.workers.channel import BatchedWriter, read_frame
from meshext.server.workers.claims import NodeClaims
from meshext.server.workers.process import WorkerSettings, command
from meshext.server.workers.shipping import Shipment
from meshext.server.workers.wire import (
    Frame,
    Kind,
    WireError,
    connection_from_json,
    encode,
    node_from_json,
)
from meshext.xds.cache import SnapshotCache
from meshext.xds.server import ConnectionInfo, ServerError, StreamEvents, StreamSecurity
from meshext.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

_START_TIMEOUT = 60.0
_MAX_BACKOFF = 30.0
_ASSIGN_CHUNK = 128
"""Changed snapshots gathered for a worker are shipped at the end of the event loop's
turn, or as soon as this many are waiting: a change reaching thousands of proxies is
computed without yielding, and the workers start serving the first of them while the
rest are computed."""


class ShippingSnapshotCache(SnapshotCache):
    """A snapshot cache that also tells a listener about every changed snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.on_change: Callable[[str, Snapshot], None] | None = None

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> bool:
        changed = super().set_snapshot(node_id, snapshot)
        if changed and self.on_change is not None:
            self.on_change(node_id, snapshot)
        return changed


def reserve_port(address: HostPort) -> tuple[socket.socket, int]:
    """Hold ``address`` for the workers: a bound, non-listening ``SO_REUSEPORT`` socket.

    Raises :class:`ServerError` when something else already uses the address."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((address.host, address.port))
        port = int(probe.getsockname()[1])
        held = socket.socket(family, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.close()
        held.bind((address.host, port))
    except OSError as exc:
        probe.close()
        raise ServerError(f"cannot listen on {address}: {exc}") from exc
    return held, port


@dataclass(eq=False)
class _Link:
    """One running worker, from the main process's side."""

    index: int
    process: asyncio.subprocess.Process
    writer: BatchedWriter
    reader: asyncio.StreamReader
    shipment: Shipment = field(default_factory=Shipment)
    connections: list[ConnectionInfo] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    admitting: dict[str, set[asyncio.Task[None]]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    assigning: dict[str, Snapshot] = field(default_factory=dict)
    """Snapshots to ship, by node id: the latest of each node's changes."""
    verdicts: list[list[Any]] = field(default_factory=list)
    """Answers to ``CONNECT`` requests not yet sent: after the assignments."""

    def assign(self, node_id: str, snapshot: Snapshot) -> None:
        """Ship ``snapshot`` for ``node_id`` soon, with other nodes' in the same frames."""
        assigning = self.assigning
        if not assigning and not self.verdicts:
            asyncio.get_running_loop().call_soon(self._ship_all)
        assigning[node_id] = snapshot
        if len(assigning) >= _ASSIGN_CHUNK:
            self._ship()
            self.writer.flush()

    def verdict(self, request: int, accepted: bool, reason: str) -> None:
        """Answer a ``CONNECT`` soon, after the snapshots assigned so far."""
        if not self.assigning and not self.verdicts:
            asyncio.get_running_loop().call_soon(self._ship_all)
        self.verdicts.append([request, accepted, reason])

    def _ship(self) -> None:
        if self.assigning:
            assigning, self.assigning = self.assigning, {}
            self.writer.send(self.shipment.assign_many(assigning.items()))

    def _ship_all(self) -> None:
        self._ship()
        if self.verdicts:
            verdicts, self.verdicts = self.verdicts, []
            self.writer.send(encode(Kind.VERDICT, verdicts))

    def send(self, frames: list[bytes] | bytes) -> None:
        self._ship_all()  # frames keep their order
        self.writer.send(frames)


class WorkerPool:
    """``count`` worker processes serving ADS, with the control plane in this process."""

    def __init__(
        self,
        count: int,
        cache: ShippingSnapshotCache,
        events: StreamEvents,
        *,
        registry: CollectorRegistry | None = None,
        security: StreamSecurity | None = None,
        ca: CaSettings | None = None,
        hosts: tuple[str, ...] = (),
    ) -> None:
        """``security`` is what the admin API reports; the workers build the same from
        ``ca`` (required with ``security``) and the certificate's ``hosts``."""
        if count < 1:
            raise ValueError("an xDS worker pool needs at least one worker")
        if security is not None and ca is None:
            raise ValueError("serving mutual TLS from workers needs the CA settings")
        self.count = count
        self.cache = cache
        self.events = events
        self.security = security
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._ca = ca if security is not None else None
        self._hosts = hosts
        self._claims = NodeClaims()
        self._links: dict[int, _Link] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._reserved: socket.socket | None = None
        self._address = ""
        self._stopping = False
        self._metrics = _WorkerMetrics(self)
        self.registry.register(self._metrics)
        self.restarts = 0
        self._query_ids = itertools.count(1)
        self._queries: dict[int, set[int]] = {}
        self._answered = asyncio.Event()
        cache.on_change = self._changed

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Reserve ``address``, start every worker there; returns the bound port."""
        if self._reserved is not None:
            raise ServerError("the xDS workers are already started")
        host, sep, port_text = address.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ServerError(f"cannot listen on {address}: not host:port")
        self._reserved, port = reserve_port(HostPort(host.strip("[]"), int(port_text)))
        self._address = f"{host}:{port}"
        self._stopping = False
        try:
            links = await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        except BaseException:
            await self.stop(grace=0)
            raise
        for link in links:
            self._supervisors.append(asyncio.create_task(self._supervise(link)))
        log.info(
            "%d xDS worker processes listening on %s (%s)",
            self.count,
            self._address,
            "PLAINTEXT" if self.security is None else "mutual TLS",
        )
        return port

    async def stop(self, grace: float) -> None:
        """Stop every worker (each ends its streams); kill those still running after
        ``grace`` plus a moment to exit."""
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        for task in self._supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._supervisors.clear()
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            link.writer.close()
        await asyncio.gather(*(_end_process(link.process, grace + 2.0) for link in links))
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    async def refresh_connections(self, timeout: float = 5.0) -> None:
        """Ask every worker for its open streams (what :meth:`connections` returns);
        gives up waiting for a worker that does not answer within ``timeout``."""
        request = next(self._query_ids)
        waiting = self._queries[request] = set(self._links)
        for link in list(self._links.values()):
            link.send(encode(Kind.QUERY, [request]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while waiting & set(self._links) and loop.time() < deadline:
                self._answered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._answered.wait(), deadline - loop.time())
        finally:
            del self._queries[request]

    def connections(self) -> list[ConnectionInfo]:
        """Open streams of every worker, as of the last :meth:`refresh_connections`."""
        found = [info for link in self._links.values() for info in link.connections]
        return sorted(found, key=lambda info: (info.connected_since, info.stream_id))

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers, by worker index."""
        return [self._links[i].process.pid for i in sorted(self._links)]

    # --- workers ------------------------------------------------------------------

    async def _spawn(self, index: int) -> _Link:
        settings = WorkerSettings(
            index=index,
            xds_address=self._address,
            ca=self._ca,
            hosts=self._hosts,
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                *command(settings, theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise ServerError(f"xDS worker {index} did not start: {exc}") from exc
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        link = _Link(index, process, BatchedWriter(writer), reader)
        try:
            ready = await asyncio.wait_for(read_frame(reader), _START_TIMEOUT)
        except TimeoutError:
            ready = None
        except BaseException:  # cancelled while starting: leave nothing behind
            writer.close()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        if ready is None or ready.kind is not Kind.READY:
            writer.close()
            await _end_process(process, 1.0)
            raise ServerError(f"xDS worker {index} did not start (exit code {process.returncode})")
        if self.security is not None:
            link.send(
                [
                    encode(Kind.CLAIM, [node_id, self._claims.holder(node_id)])
                    for node_id in self._claims.node_ids()
                ]
            )
        self._links[index] = link
        log.info("xDS worker %d started (pid %s)", index, process.pid)
        return link

    async def _supervise(self, link: _Link) -> None:
        """Serve the worker's frames; when it exits, release its nodes and restart it."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            started = loop.time()
            await self._serve_link(link)
            self._exited(link)
            if self._stopping:
                return
            if loop.time() - started > 60:
                backoff = 1.0
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                try:
                    link = await self._spawn(link.index)
                except ServerError as exc:
                    log.error("%s; retrying", exc)
                    continue
                self.restarts += 1
                break

    async def _serve_link(self, link: _Link) -> None:
        try:
            while (frame := await read_frame(link.reader)) is not None:
                self._take(link, frame)
        except (WireError, OSError) as exc:
            log.error("xDS worker %d: %s", link.index, exc)

    def _take(self, link: _Link, frame: Frame) -> None:
        header = frame.header
        try:
            if frame.kind is Kind.CONNECT:
                for request, node_json, identity in header:
                    node = node_from_json(node_json)
                    task = asyncio.create_task(self._admit(link, int(request), node, str(identity)))
                    tasks = link.admitting.setdefault(node.id, set())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            elif frame.kind is Kind.ACK:
                on_ack, held = self.events.on_ack, self._claims.held
                for type_url, version, names, node_ids in header:
                    for node_id in node_ids:
                        if held(node_id):
                            on_ack(node_id, type_url, version, names)
            elif frame.kind is Kind.NACK:
                node_id, type_url, version, names, detail = header
                if self._claims.workers(node_id):
                    self.events.on_nack(node_id, type_url, version, names, detail)
            elif frame.kind is Kind.DISCONNECT:
                (node_id,) = header
                self._release(link, str(node_id))
            elif frame.kind is Kind.CONNECTIONS:
                request, connections = header
                link.connections = [connection_from_json(value) for value in connections]
                answered = self._queries.get(int(request))
                if answered is not None:
                    answered.discard(link.index)
                    if not answered:
                        self._answered.set()
            elif frame.kind is Kind.METRICS:
                link.metrics = header
            else:
                log.warning("xDS worker %d sent an unexpected %s", link.index, frame.kind.name)
        except (ValueError, TypeError, WireError) as exc:
            log.error("xDS worker %d sent a malformed %s: %s", link.index, frame.kind.name, exc)
        except Exception:
            log.exception("handling %s from xDS worker %d failed", frame.kind.name, link.index)

    async def _admit(self, link: _Link, request: int, node: Any, identity: str) -> None:
        admission = self._claims.admit(node.id, link.index, identity)
        if not admission.admitted:
            log.warning("xDS worker %d: stream refused: %s", link.index, admission.reason)
            link.verdict(request, False, admission.reason)
            return
        if admission.first and identity:
            self._broadcast(encode(Kind.CLAIM, [node.id, identity]))
        try:
            await self.events.on_connect(node)
        except Exception:
            log.exception("on_connect failed for node %r", node.id)
        snapshot = self.cache.get(node.id)
        if snapshot is not None:
            link.assign(node.id, snapshot)
        link.verdict(request, True, "")

    def _release(self, link: _Link, node_id: str) -> None:
        for task in link.admitting.pop(node_id, ()):
            task.cancel()
        link.assigning.pop(node_id, None)
        link.send(link.shipment.forget(node_id))
        released = self._claims.release(node_id, link.index)
        if released.last:
            self._gone(node_id)

    def _gone(self, node_id: str) -> None:
        if self.security is not None:
            self._broadcast(encode(Kind.CLAIM, [node_id, None]))
        try:
            self.events.on_disconnect(node_id)
        except Exception:
            log.exception("on_disconnect failed for node %r", node_id)

    def _exited(self, link: _Link) -> None:
        if self._links.get(link.index) is link:
            del self._links[link.index]
        link.writer.close()
        for tasks in link.admitting.values():
            for task in tasks:
                task.cancel()
        self._metrics.retire(link.metrics)
        self._answered.set()  # a query no longer waits for this worker
        released = self._claims.release_worker(link.index)
        for node_id, release in released:
            if release.last:
                self._gone(node_id)
        if not self._stopping:
            log.error(
                "xDS worker %d (pid %d) exited; its %d proxies reconnect to the others",
                link.index,
                link.process.pid,
                len(released),
            )

    def _changed(self, node_id: str, snapshot: Snapshot) -> None:
        for index in self._claims.holding(node_id):
            link = self._links.get(index)
            if link is not None:
                link.assign(node_id, snapshot)

    def _broadcast(self, frame: bytes) -> None:
        for link in self._links.values():
            link.send(frame)

    def __repr__(self) -> str:
        return f"WorkerPool(workers={len(self._links)}/{self.count}, address={self._address!r})"


class _WorkerMetrics(Collector):
    """The workers' metrics summed; counters of exited workers are kept, so totals
    never go down across a restart."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._retired: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def retire(self, families: list[Any]) -> None:
        for _name, kind, _help, samples in families:
            if kind != "counter":
                continue
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                self._retired[key] = self._retired.get(key, 0.0) + float(value)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        families: dict[str, tuple[str, str, dict[Any, float]]] = {}
        for link in list(self._pool._links.values()):
            for name, kind, documentation, samples in link.metrics:
                _, _, sums = families.setdefault(name, (kind, documentation, {}))
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(sorted(labels.items())))
                    sums[key] = sums.get(key, 0.0) + float(value)
        for name, (kind, documentation, sums) in sorted(families.items()):
            metric = Metric(name, documentation, kind)
            if kind == "counter":
                for key, value in self._retired.items():
                    if key[0].removesuffix("_total") == name:
                        sums[key] = sums.get(key, 0.0) + value
            for (sample_name, labels), value in sorted(sums.items()):
                metric.add_sample(sample_name, dict(labels), value)
            yield metric


async def _end_process(process: asyncio.subprocess.Process, grace: float) -> None:
    """Wait ``grace`` seconds for ``process`` to exit, then terminate, then kill it."""
    for stop in (None, process.terminate, process.kill):
        if stop is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                stop()
        try:
            await asyncio.wait_for(process.wait(), grace if stop is None else 2.0)
            return
        except TimeoutError:
            continue
