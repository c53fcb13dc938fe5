"""One xDS worker process: an ADS server fed with snapshots by the main process.

The worker listens on the shared xDS address (``SO_REUSEPORT``), with the same mutual
TLS and the same authorization as an in-process server: it loads the mesh CA and
issues itself a certificate for the control plane's identity. What its streams say
goes to the main process (connect, ACK, NACK, disconnect); the snapshots it serves
come from there (:mod:`meshext.server.workers.shipping`). It answers a node only
after the main process has admitted the stream, and it stops when the main process
goes away (its end of the socket closes).

It runs as ``python -m meshext.server.workers.process SETTINGS FD``: the settings as
JSON, and the file descriptor of its end of a socket pair with the main process. A
fresh interpreter importing only this module and what it needs (about 50 MiB) rather
than a ``multiprocessing`` child, which would import the parent's main module (the
whole command line, about 125 MiB) in every worker.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from meshext.identity.authority import CaSettings
from meshext.identity.peer import MeshStreamSecurity, ServerCertificate
from meshext.server.collection import collection_held_through_sends
from meshext.server.workers.channel import BatchedWriter, read_frame
from meshext.server.workers.shipping import SnapshotTable
from meshext.server.workers.wire import (
    Frame,
    Kind,
    WireError,
    connection_to_json,
    encode,
    node_to_json,
)
from meshext.xds.cache import SnapshotCache
from meshext.xds.server import AdsServer, StreamDenied, StreamSecurity
from meshext.xds.types import Node

log = logging.getLogger(__name__)

PROFILE_ENV = "MESHEXT_XDS_WORKER_PROFILE"
"""When set in the environment, each worker runs under cProfile and writes its profile
to ``<value>.worker<index>.<pid>`` when it stops (read it with ``pstats``)."""


@dataclass(frozen=True)
class WorkerSettings:
    index: int
    xds_address: str
    """``host:port`` with the port every worker binds."""
    ca: CaSettings | None
    """The mesh CA; ``None`` serves plaintext."""
    hosts: tuple[str, ...] = ()
    """Names the server certificate is issued for."""
    log_level: int = logging.INFO
    report_interval: float = 0.5
    """How often metrics are reported when they changed."""

    def to_json(self) -> str:
        ca = self.ca
        return json.dumps(
            {
                "index": self.index,
                "xds_address": self.xds_address,
                "ca": None
                if ca is None
                else {
                    "cert": _path(ca.cert),
                    "key": _path(ca.key),
                    "directory": _path(ca.directory),
                    "trust_domain": ca.trust_domain,
                },
                "hosts": list(self.hosts),
                "log_level": self.log_level,
                "report_interval": self.report_interval,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        value = json.loads(text)
        ca = value["ca"]
        return cls(
            index=int(value["index"]),
            xds_address=str(value["xds_address"]),
            ca=None
            if ca is None
            else CaSettings(
                cert=_optional_path(ca["cert"]),
                key=_optional_path(ca["key"]),
                directory=_optional_path(ca["directory"]),
                trust_domain=str(ca["trust_domain"]),
            ),
            hosts=tuple(str(host) for host in value["hosts"]),
            log_level=int(value["log_level"]),
            report_interval=float(value["report_interval"]),
        )


def command(settings: WorkerSettings, fd: int) -> list[str]:
    """The command line starting a worker that talks over file descriptor ``fd``."""
    return [sys.executable, "-m", __name__, settings.to_json(), str(fd)]


def main(argv: Sequence[str]) -> None:
    """Entry point of the worker process: ``SETTINGS FD``."""
    settings = WorkerSettings.from_json(argv[0])
    channel = socket.socket(fileno=int(argv[1]))
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s xds-worker-{settings.index} %(name)s: %(message)s",
    )
    # Interrupts go to the main process, which stops the workers by closing the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    profile = os.environ.get(PROFILE_ENV)
    if not profile:
        asyncio.run(_Worker(settings).run(channel))
        return
    import cProfile  # noqa: PLC0415 (only when profiling)

    profiler = cProfile.Profile()
    try:
        profiler.runcall(asyncio.run, _Worker(settings).run(channel))
    finally:
        profiler.dump_stats(f"{profile}.worker{settings.index}.{os.getpid()}")


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _optional_path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


class ClaimAwareSecurity:
    """The mesh's stream security, also refusing a node id another worker's peer holds.

    The main process tells every worker which identity holds which node id
    (``CLAIM`` frames); a stream claiming a held node id as someone else is refused
    here with ``PERMISSION_DENIED``. Claims racing in two workers at once are settled
    by the main process when the stream connects.
    """

    def __init__(self, inner: StreamSecurity) -> None:
        self.inner = inner
        self.claims: dict[str, str] = {}

    def ssl_context(self) -> ssl.SSLContext:
        return self.inner.ssl_context()

    def renew(self) -> None:
        self.inner.renew()

    def authorize(self, auth_context: Mapping[str, Sequence[bytes]], node: Node) -> str:
        identity = self.inner.authorize(auth_context, node)
        holder = self.claims.get(node.id)
        if holder is not None and holder != identity:
            raise StreamDenied(
                f"node {node.id!r} is connected as {holder}; {identity} may not claim it",
                "node id held by another identity",
            )
        return identity


class _Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.cache = SnapshotCache(check_consistency=False)
        self.table = SnapshotTable()
        self.security: ClaimAwareSecurity | None = None
        if settings.ca is not None:
            server = ServerCertificate(settings.ca.load(), hosts=settings.hosts)
            self.security = ClaimAwareSecurity(MeshStreamSecurity(server))
        self.registry = CollectorRegistry(auto_describe=True)
        self.ads = AdsServer(
            self.cache, self, registry=self.registry, security=self.security, reuse_port=True
        )
        self.present: set[str] = set()
        self.verdicts: dict[int, asyncio.Future[tuple[bool, str]]] = {}
        self.requests = itertools.count(1)
        self.writer: BatchedWriter | None = None
        self.acks: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
        """ACKs not yet sent, by what they acknowledge: one frame per loop turn."""
        self.acking: set[str] = set()
        """Node ids in ``acks``: a node's second ACK goes in the next frame, so the main
        process sees each node's ACKs in order."""
        self.connects: list[list[Any]] = []
        """``CONNECT`` requests not yet sent: one frame per loop turn."""

    async def run(self, channel: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=channel)
        self.writer = BatchedWriter(writer)
        port = await self.ads.start(self.settings.xds_address)
        self.send(encode(Kind.READY, [port]))
        # As meshext.server.app.tune_garbage_collector (not imported: it would load the
        # whole server): streams are long-lived objects, young collections rarer.
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(100_000, middle, old)
        reporter = asyncio.create_task(self.report())
        try:
            while (frame := await read_frame(reader)) is not None:
                self.take(frame)
        except WireError:
            log.exception("malformed frame from the main process; stopping")
        finally:
            reporter.cancel()
            await self.ads.stop(grace=0.5)

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self._send_pending()  # frames keep their order
        self.writer.send(data)

    def _schedule(self) -> None:
        if not self.acks and not self.connects:
            asyncio.get_running_loop().call_soon(self._send_pending)

    def _send_pending(self) -> None:
        assert self.writer is not None
        if self.connects:
            connects, self.connects = self.connects, []
            self.writer.send(encode(Kind.CONNECT, connects))
        if self.acks:
            acks, self.acks = self.acks, {}
            self.acking.clear()
            header = [
                [type_url, version, list(names), node_ids]
                for (type_url, version, names), node_ids in acks.items()
            ]
            self.writer.send(encode(Kind.ACK, header))

    def take(self, frame: Frame) -> None:
        if frame.kind is Kind.VERDICT:
            for request, accepted, reason in frame.header:
                verdict = self.verdicts.pop(int(request), None)
                if verdict is not None and not verdict.done():
                    verdict.set_result((bool(accepted), str(reason)))
        elif frame.kind is Kind.QUERY:
            (request,) = frame.header
            connections = [
                connection_to_json(info, self.settings.index) for info in self.ads.connections()
            ]
            self.send(encode(Kind.CONNECTIONS, [request, connections]))
        elif frame.kind is Kind.CLAIM:
            node_id, identity = frame.header
            if self.security is not None:
                if identity is None:
                    self.security.claims.pop(str(node_id), None)
                else:
                    self.security.claims[str(node_id)] = str(identity)
        else:
            assigned = self.table.apply(frame)
            if assigned is not None:
                node_ids, snapshot = assigned
                present, set_snapshot = self.present, self.cache.set_snapshot
                with collection_held_through_sends(asyncio.get_running_loop()):
                    for node_id in node_ids:
                        if node_id in present:
                            set_snapshot(node_id, snapshot)

    async def report(self) -> None:
        """Send metrics to the main process when they changed."""
        last_metrics: list[Any] = []
        while True:
            await asyncio.sleep(self.settings.report_interval)
            metrics = metric_families(self.registry)
            if metrics != last_metrics:
                last_metrics = metrics
                self.send(encode(Kind.METRICS, metrics))

    # --- StreamEvents -----------------------------------------------------------------

    async def on_connect(self, node: Node) -> None:
        identity = self.ads.identity_of(node.id) or ""
        self.present.add(node.id)
        request = next(self.requests)
        verdict: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self.verdicts[request] = verdict
        self._schedule()
        self.connects.append([request, node_to_json(node), identity])
        try:
            accepted, reason = await verdict
        finally:
            self.verdicts.pop(request, None)
        if not accepted:
            log.warning("stream for node %r refused: %s", node.id, reason)
            raise StreamDenied(reason, "node id held by another identity")

    def on_ack(
        self, node_id: str, type_url: str, version: str, resource_names: Sequence[str]
    ) -> None:
        key = (type_url, version, tuple(resource_names))
        if node_id in self.acking:
            self._send_pending()
        self._schedule()
        self.acking.add(node_id)
        acks = self.acks
        node_ids = acks.get(key)
        if node_ids is None:
            acks[key] = [node_id]
        else:
            node_ids.append(node_id)

    def on_nack(
        self,
        node_id: str,
        type_url: str,
        rejected_version: str,
        resource_names: Sequence[str],
        error_detail: str,
    ) -> None:
        header = [node_id, type_url, rejected_version, list(resource_names), error_detail]
        self.send(encode(Kind.NACK, header))

    def on_disconnect(self, node_id: str) -> None:
        self.present.discard(node_id)
        self.cache.clear(node_id)
        self.send(encode(Kind.DISCONNECT, [node_id]))


def metric_families(registry: CollectorRegistry) -> list[Any]:
    """The registry's samples as JSON values (``_created`` timestamps left out)."""
    families = []
    for metric in registry.collect():
        samples = [
            [sample.name, dict(sample.labels), sample.value]
            for sample in metric.samples
            if not sample.name.endswith("_created")
        ]
        families.append([metric.name, metric.type, metric.documentation, samples])
    return families


if __name__ == "__main__":
    main(sys.argv[1:])
