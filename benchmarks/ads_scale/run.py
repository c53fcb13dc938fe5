"""ADS at scale: how fast does one extension config change reach N proxies?

``run.py`` starts the meshext ADS server in one process and N simulated proxies in
another (``--client-processes`` to split them). Each simulated proxy is a grpc.aio
ADS stream on its own connection, with its own node id, that behaves like Envoy:
it subscribes to clusters and listeners (wildcard), reads the ECDS filter names from
the listener's HTTP connection manager, subscribes to those, and ACKs every response.

Once every proxy holds the initial snapshot, the server runs ``--rounds`` rounds:
it changes one ECDS resource (``ext-0``) in every proxy's snapshot
(``SnapshotCache.set_snapshot`` for every node) and measures, per proxy, the time
from the start of the change to that proxy's ACK of the new version. It reports the
time until all proxies ACKed (per round) and per-proxy latencies, and the server's
resident memory before the proxies connected and once they all hold their snapshot.

    .venv/bin/python benchmarks/ads_scale/run.py --proxies 1000 --rounds 10
    .venv/bin/python benchmarks/ads_scale/run.py --proxies 1000 --protocol delta

``--through-control-plane`` measures the path users take instead: the server process
runs the real control plane (``meshext.server.app.running_control_plane``) over a
temporary config folder (a mesh with extensions enabled, a member roll, five
ServiceMeshExtensions with the example modules); the simulated proxies identify as
sidecars of a few Deployments and some one-off pods, and each round rewrites one
extension's ``spec.config`` in the folder. The time per proxy runs from the file write
to the server receiving that proxy's ACK of the changed extension config, through the
folder watch, the control loop (planning and generating every proxy's resources) and
the ADS push.

    .venv/bin/python benchmarks/ads_scale/run.py --through-control-plane --proxies 1000

``--mtls`` runs either mode with xDS over mutual TLS as ``meshext serve`` does by
default: a CA in the work folder, one certificate per simulated proxy, each stream
authorized from its peer certificate. Without it the server is plaintext, to compare.

    .venv/bin/python benchmarks/ads_scale/run.py --proxies 1000 --mtls

Prints one JSON object with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import hashlib
import json
import logging
import os
import platform
import pstats
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshext.api.meta import ResourceKey
from meshext.envoy import names
from meshext.envoy.node import HostPort, node_metadata
from meshext.identity import ca as mesh_ca
from meshext.identity.authority import CaSettings
from meshext.identity.peer import MeshStreamSecurity, ServerCertificate
from meshext.identity.spiffe import SpiffeId
from meshext.mesh.workload import ProxyKind
from meshext.server import app
from meshext.server.control import ControlPlane
from meshext.sources.folder import LoadResult
from meshext.sources.watch import FolderSource
from meshext.xds import types
from meshext.xds.cache import SnapshotCache
from meshext.xds.server import AdsServer
from meshext.xds.snapshot import ResourceSet, Snapshot, make_resource, pack
from meshext.xds.types import Node

FILTERS = 3
HEADER_MUTATION = types.message_type_url(header_mutation_pb2.HeaderMutation())


# ----------------------------------------------------------------------------- resources


def extension(name: str, value: str) -> Any:
    mutation = header_mutation_pb2.HeaderMutation()
    append = mutation.mutations.response_mutations.add().append
    append.header.key = "x-" + name
    append.header.value = value
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=pack(mutation))


def listener() -> Any:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="inbound")
    route = hcm.route_config.virtual_hosts.add(name="all", domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    for index in range(FILTERS):
        http_filter = hcm.http_filters.add(name=f"ext-{index}")
        http_filter.config_discovery.config_source.ads.SetInParent()
        http_filter.config_discovery.type_urls.append(HEADER_MUTATION)
    hcm.http_filters.add(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    result = listener_pb2.Listener(name="inbound")
    result.address.socket_address.address = "0.0.0.0"
    result.address.socket_address.port_value = 15006
    result.filter_chains.add().filters.add(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(hcm)
    )
    return result


def cluster() -> Any:
    result = cluster_pb2.Cluster(name="backend", type=cluster_pb2.Cluster.STATIC)
    result.connect_timeout.seconds = 1
    return result


class Resources:
    """The resources every proxy gets; ``ext-0`` changes each round.

    Resources are built and versioned once and shared by every proxy's snapshot,
    as a control plane caching its generated resources would do.
    """

    def __init__(self) -> None:
        self.cluster = make_resource(types.CLUSTER, cluster())
        self.listener = make_resource(types.LISTENER, listener())
        self.extensions = [
            make_resource(types.EXTENSION_CONFIG, extension(f"ext-{index}", "0"))
            for index in range(FILTERS)
        ]

    def change(self, generation: int) -> str:
        self.extensions[0] = make_resource(
            types.EXTENSION_CONFIG, extension("ext-0", str(generation))
        )
        return self.extensions[0].version

    def snapshot(self) -> Snapshot:
        return Snapshot(
            [
                ResourceSet.of(types.CLUSTER, [self.cluster]),
                ResourceSet.of(types.LISTENER, [self.listener]),
                ResourceSet.of(types.EXTENSION_CONFIG, list(self.extensions)),
            ]
        )


# -------------------------------------------------------------------------------- server


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Bench:
    """StreamEvents for the benchmark: snapshots on connect, ACK times per round."""

    def __init__(self, cache: SnapshotCache, proxies: int) -> None:
        self.cache = cache
        self.proxies = proxies
        self.resources = Resources()
        self.target = self.resources.extensions[0].version
        self.started = 0.0
        self.acked: dict[str, float] = {}
        self.done = asyncio.Event()
        self.nacks = 0

    async def on_connect(self, node: Node) -> None:
        self.cache.set_snapshot(node.id, self.resources.snapshot())

    def on_ack(self, node_id: str, type_url: str, version: str, resource_names: Any) -> None:
        if version != self.target or type_url != types.EXTENSION_CONFIG:
            return
        if node_id not in self.acked:
            self.acked[node_id] = time.perf_counter() - self.started
            if len(self.acked) == self.proxies:
                self.done.set()

    def on_nack(
        self, node_id: str, type_url: str, version: str, names: Any, error_detail: str
    ) -> None:
        self.nacks += 1

    def on_disconnect(self, node_id: str) -> None:
        pass

    def expect(self, version: str) -> None:
        self.target = version
        self.acked = {}
        self.done = asyncio.Event()


class GcClock:
    """Wall time spent in garbage collection, read and reset once per round."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started

    def take(self) -> float:
        total, self.total = self.total, 0.0
        return total


class Profiler:
    """cProfile of the server's event loop over the connect phase and over the rounds
    (``<prefix>-connect.prof``, ``<prefix>-rounds.prof``); nothing without a prefix."""

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix
        self.stats: dict[str, pstats.Stats] = {}
        self.current: cProfile.Profile | None = None

    def start(self) -> None:
        if self.prefix is not None:
            self.current = cProfile.Profile()
            self.current.enable()

    def stop(self, phase: str) -> None:
        if self.current is None:
            return
        self.current.disable()
        stats = self.stats.get(phase)
        if stats is None:
            stats = self.stats[phase] = pstats.Stats(self.current)
        else:
            stats.add(self.current)
        stats.dump_stats(f"{self.prefix}-{phase}.prof")
        self.current = None


async def serve(args: argparse.Namespace) -> None:
    if args.debug:
        logging.basicConfig(level=logging.WARNING)
    watchdog = asyncio.create_task(exit_with_parent())
    gc_clock = GcClock()
    cache = SnapshotCache()
    bench = Bench(cache, args.proxies)
    security = None
    if args.mtls:
        ca = mesh_ca.load_or_create(Path(args.workdir) / "ca", "cluster.local")
        security = MeshStreamSecurity(ServerCertificate(ca, hosts=()))
    server = AdsServer(cache, bench, security=security)
    gc.collect()
    rss_idle = rss_bytes()
    port = await server.start(f"127.0.0.1:{args.port}")
    print(json.dumps({"listening": port}), flush=True)
    profiler = Profiler(args.profile)
    profiler.start()
    connect_cpu = time.process_time()
    bench.started = time.perf_counter()
    try:
        await asyncio.wait_for(bench.done.wait(), args.timeout)
    except TimeoutError:
        print(
            f"only {len(bench.acked)} of {args.proxies} proxies ACKed, "
            f"{len(server.connections())} streams",
            file=sys.stderr,
        )
        raise
    connect_seconds = time.perf_counter() - bench.started
    connect_cpu = time.process_time() - connect_cpu
    profiler.stop("connect")
    await asyncio.sleep(1.0)
    gc.collect()
    rss_connected = rss_bytes()
    if args.tune_gc:
        # What a long-running control plane can do once its proxies are connected: move
        # the objects that live as long as the streams out of the collector's way, and
        # collect the young generation less often.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
    rounds = []
    for generation in range(1, args.rounds + 1):
        await asyncio.sleep(args.pause)
        bench.expect(bench.resources.change(generation))
        gc_clock.take()
        profiler.start()
        cpu = time.process_time()
        bench.started = time.perf_counter()
        for node_id in cache.node_ids():
            cache.set_snapshot(node_id, bench.resources.snapshot())
        published = time.perf_counter() - bench.started
        await asyncio.wait_for(bench.done.wait(), args.timeout)
        cpu = time.process_time() - cpu
        profiler.stop("rounds")
        latencies = sorted(bench.acked.values())
        rounds.append(
            {
                "publish_s": published,
                "all_acked_s": latencies[-1],
                "server_cpu_s": cpu,
                "gc_s": gc_clock.take(),
                "latencies": latencies,
            }
        )
    await server.stop(0)
    watchdog.cancel()
    print(
        json.dumps(
            {
                "connect_all_s": connect_seconds,
                "connect_server_cpu_s": connect_cpu,
                "rss_idle": rss_idle,
                "rss_connected": rss_connected,
                "nacks": bench.nacks,
                "rounds": rounds,
            }
        ),
        flush=True,
    )


# ------------------------------------------------------- end to end: the real control plane

MODULES = Path(__file__).resolve().parents[2] / "examples" / "extensions" / "build"
CHANGED = ResourceKey("ServiceMeshExtension", "istio-system", "request-counter")
"""The extension whose ``spec.config`` each round rewrites; it applies to every proxy."""
CHANGED_FILE = "20-request-counter.yaml"


@dataclass(frozen=True)
class Deployment:
    """A Deployment whose replicas are simulated proxies with identical metadata."""

    namespace: str
    name: str
    labels: dict[str, str]
    weight: int
    """Replicas per 130 proxies."""
    inbound_port: int
    app_port: int


DEPLOYMENTS = (
    Deployment("bookinfo", "productpage-v1", {"app": "productpage", "version": "v1"}, 20, 15006, 9080),
    Deployment("bookinfo", "reviews-v1", {"app": "reviews", "version": "v1"}, 15, 15006, 9080),
    Deployment("bookinfo", "reviews-v2", {"app": "reviews", "version": "v2"}, 15, 15006, 9080),
    Deployment("bookinfo", "reviews-v3", {"app": "reviews", "version": "v3"}, 15, 15006, 9080),
    Deployment("bookinfo", "ratings-v1", {"app": "ratings", "version": "v1"}, 10, 15006, 9080),
    Deployment("bookinfo", "details-v1", {"app": "details", "version": "v1"}, 10, 15006, 9080),
    Deployment("payments", "api", {"app": "payments-api"}, 25, 15001, 8080),
    Deployment("payments", "worker", {"app": "payments-worker"}, 15, 15001, 8081),
    Deployment("payments", "ledger", {"app": "ledger"}, 5, 15001, 5432),
)  # fmt: skip
# Replicas interleaved by weight (smooth weighted round robin), so that any number of
# proxies spreads over the Deployments in proportion.
SLOTS = [
    deployment
    for _, _, deployment in sorted(
        ((replica + 0.5) / d.weight, order, d)
        for order, d in enumerate(DEPLOYMENTS)
        for replica in range(d.weight)
    )
]
ONE_OFF_EVERY = 50
"""Every 50th proxy is a one-off pod (a Job's) with labels no other proxy has."""


def simulated_proxy(index: int) -> tuple[str, dict[str, Any]]:
    """Node id and node metadata of simulated proxy ``index``, as ``meshext bootstrap``
    would write them: replicas of a Deployment share namespace, labels (including the
    ReplicaSet's ``pod-template-hash``), inbound port and application address."""
    if index % ONE_OFF_EVERY == ONE_OFF_EVERY - 1:
        namespace, workload, port, app_port = "payments", f"settlement-{index}", 15001, 8090
        labels = {"app": "settlement", "job-name": workload}
        pod = workload
    else:
        deployment = SLOTS[index % len(SLOTS)]
        namespace, workload = deployment.namespace, deployment.name
        port, app_port = deployment.inbound_port, deployment.app_port
        template = hashlib.sha256(workload.encode()).hexdigest()[:10]
        labels = {**deployment.labels, "pod-template-hash": template}
        pod = f"{workload}-{template}-{index:05d}"
    metadata = node_metadata(
        namespace=namespace,
        labels=labels,
        workload_name=workload,
        kind=ProxyKind.SIDECAR,
        inbound_port=port,
        app=HostPort("127.0.0.1", app_port),
    )
    return f"sidecar~{pod}.{namespace}", metadata


MESH_YAML = """\
apiVersion: maistra.io/v2
kind: ServiceMeshControlPlane
metadata:
  name: basic
  namespace: istio-system
spec:
  version: v2.2
  techPreview:
    wasmExtensions:
      enabled: true
---
apiVersion: maistra.io/v1
kind: ServiceMeshMemberRoll
metadata:
  name: default
  namespace: istio-system
spec:
  members:
    - bookinfo
    - payments
"""

EXTENSIONS_YAML = """\
apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata:
  name: header-append
  namespace: istio-system
spec:
  workloadSelector:
    labels:
      app: productpage
  config:
    value: mesh
  image: file:{modules}/header-append.wasm
  phase: PostAuthZ
  priority: 100
---
apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata:
  name: require-token
  namespace: bookinfo
spec:
  workloadSelector:
    labels:
      app: reviews
  config:
    name: x-mesh-token
  image: file:{modules}/deny-unless-header.wasm
  phase: PreAuthZ
  priority: 50
---
apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata:
  name: tag-bookinfo
  namespace: bookinfo
spec:
  config:
    name: x-header-append
    value: bookinfo
  image: file:{modules}/header-append.wasm
  phase: PostAuthZ
  priority: 200
---
apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata:
  name: tag-payments
  namespace: payments
spec:
  workloadSelector:
    labels:
      app: payments-api
  config:
    name: x-header-append
    value: payments
  image: file:{modules}/header-append.wasm
  phase: PostAuthZ
  priority: 200
"""

CHANGED_YAML = """\
apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata:
  name: {name}
  namespace: {namespace}
spec:
  config:
    name: meshext_bench_requests_{generation}
  image: file:{modules}/request-counter.wasm
  phase: PostStats
  priority: 10
"""


def write_atomically(path: Path, text: str) -> None:
    """Write a hidden temporary file next to ``path`` and rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_changed(config: Path, generation: int) -> None:
    text = CHANGED_YAML.format(
        name=CHANGED.name, namespace=CHANGED.namespace, generation=generation, modules=MODULES
    )
    write_atomically(config / CHANGED_FILE, text)


def write_config(config: Path) -> None:
    config.mkdir(parents=True, exist_ok=True)
    (config / "00-mesh.yaml").write_text(MESH_YAML)
    (config / "10-extensions.yaml").write_text(EXTENSIONS_YAML.format(modules=MODULES))
    write_changed(config, 0)


class TimedSource:
    """The folder source, noting when each complete configuration comes out of it."""

    def __init__(self, inner: FolderSource) -> None:
        self.inner = inner
        self.loads: list[float] = []
        self.errors = 0

    async def updates(self) -> AsyncIterator[LoadResult]:
        async for result in self.inner.updates():
            self.loads.append(time.perf_counter())
            self.errors += len(result.errors)
            yield result


class TimedSnapshotCache(SnapshotCache):
    """The snapshot cache, noting when snapshots that differ from a proxy's last one
    are published (the boundary between the control loop and the ADS push)."""

    def __init__(self, *, check_consistency: bool = True) -> None:
        super().__init__(check_consistency=check_consistency)
        self.changed = 0
        self.first_changed = 0.0
        self.last_changed = 0.0

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> bool:
        changed = super().set_snapshot(node_id, snapshot)
        if changed:
            now = time.perf_counter()
            if not self.changed:
                self.first_changed = now
            self.last_changed = now
            self.changed += 1
        return changed

    def reset(self) -> None:
        self.changed = 0
        self.first_changed = self.last_changed = 0.0


@dataclass
class Round:
    """ACKs of the changed extension config with a version other than ``before``'s."""

    expected: int
    before: dict[str, str]
    started: float = 0.0
    acked: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class BenchControlPlane(ControlPlane):
    """The real control plane, noting ACKs of the changed extension's config and when
    each recomputation of every proxy's snapshot runs. Installed in place of
    :class:`ControlPlane` while ``running_control_plane`` builds its components."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watched = names.extension_config_name(CHANGED)
        self.holding: dict[str, str] = {}
        """Per node: the version of the changed extension it last ACKed."""
        self.expected = 0
        self.all_hold = asyncio.Event()
        self.round: Round | None = None
        self.recomputes: list[tuple[float, float]] = []
        self.last_activity = time.perf_counter()
        self.nacks = 0
        self.disconnects = 0

    def on_ack(
        self, node_id: str, type_url: str, version: str, resource_names: Sequence[str]
    ) -> None:
        now = time.perf_counter()
        self.last_activity = now
        if type_url == types.EXTENSION_CONFIG and self.watched in resource_names:
            self.holding[node_id] = version
            if len(self.holding) >= self.expected:
                self.all_hold.set()
            current = self.round
            if (
                current is not None
                and node_id not in current.acked
                and version != current.before.get(node_id)
            ):
                current.acked[node_id] = now - current.started
                if len(current.acked) >= current.expected:
                    current.done.set()
        super().on_ack(node_id, type_url, version, resource_names)

    def on_nack(
        self,
        node_id: str,
        type_url: str,
        rejected_version: str,
        resource_names: Sequence[str],
        error_detail: str,
    ) -> None:
        self.nacks += 1
        super().on_nack(node_id, type_url, rejected_version, resource_names, error_detail)

    def on_disconnect(self, node_id: str) -> None:
        self.disconnects += 1
        self.holding.pop(node_id, None)
        super().on_disconnect(node_id)

    def recompute(self) -> None:
        started = time.perf_counter()
        super().recompute()
        self.last_activity = time.perf_counter()
        self.recomputes.append((started, self.last_activity))

    def start_round(self) -> Round:
        self.recomputes = []
        self.round = Round(len(self.holding), dict(self.holding))
        return self.round

    async def quiet(self, seconds: float, timeout: float) -> None:
        """Until no ACK arrived and no recomputation ran for ``seconds``."""
        async with asyncio.timeout(timeout):
            while time.perf_counter() - self.last_activity < seconds:
                await asyncio.sleep(0.05)


async def exit_with_parent() -> None:
    """End this process when the driver that started it is gone."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    os._exit(1)


async def change_round(
    control: BenchControlPlane,
    cache: TimedSnapshotCache,
    source: TimedSource,
    config: Path,
    generation: int,
    gc_clock: GcClock,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Rewrite the changed extension's file; time its way to every proxy's ACK."""
    current = control.start_round()
    cache.reset()
    loads = len(source.loads)
    gc_clock.take()
    cpu = time.process_time()
    current.started = time.perf_counter()
    write_changed(config, generation)
    await asyncio.wait_for(current.done.wait(), args.timeout)
    all_acked = max(current.acked.values())
    cpu_until_acked = time.process_time() - cpu
    await control.quiet(0.5, args.timeout)
    cpu = time.process_time() - cpu
    t0 = current.started
    if len(source.loads) <= loads:
        raise RuntimeError("every proxy ACKed a change the folder source never loaded")
    loaded = source.loads[loads] - t0
    offered = {
        record.node_id: record.extension_versions[CHANGED][1] for record in control.proxies()
    }
    stale = sum(1 for node_id, version in control.holding.items() if offered[node_id] != version)
    computed = [(s - t0, e - t0) for s, e in control.recomputes if s - t0 >= loaded]
    first_start, first_end = computed[0]
    return {
        "all_acked_s": all_acked,
        "load_s": loaded,
        "debounce_s": first_start - loaded,
        "recompute_s": first_end - first_start,
        "push_s": all_acked - first_end,
        "first_changed_s": cache.first_changed - t0,
        "last_changed_s": cache.last_changed - t0,
        "changed_snapshots": cache.changed,
        "acked_not_offered": stale,
        "recomputes_until_acked": sum(1 for s, _ in computed if s < all_acked),
        "recompute_s_until_acked": sum(min(e, all_acked) - s for s, e in computed if s < all_acked),
        "recomputes": len(computed),
        "recompute_s_total": sum(e - s for s, e in computed),
        "server_cpu_s_until_acked": cpu_until_acked,
        "server_cpu_s": cpu,
        "gc_s": gc_clock.take(),
        "latencies": sorted(current.acked.values()),
    }


async def serve_control_plane(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    watchdog = asyncio.create_task(exit_with_parent())
    workdir = Path(args.workdir)
    config = workdir / "config"
    write_config(config)
    source = TimedSource(FolderSource(config))
    options = app.ServeOptions(
        config=config,
        xds_address=f"127.0.0.1:{args.port}",
        admin_address="127.0.0.1:0",
        module_address="127.0.0.1:0",
        cache_dir=workdir / "cache",
        insecure_xds=not args.mtls,
        ca=CaSettings(directory=workdir / "ca"),
    )
    gc_clock = GcClock()
    async with contextlib.AsyncExitStack() as stack:
        with (
            mock.patch.object(app, "ControlPlane", BenchControlPlane),
            mock.patch.object(app, "SnapshotCache", TimedSnapshotCache),
        ):
            running = await stack.enter_async_context(
                app.running_control_plane(options, source=source)
            )
        app.tune_garbage_collector()  # as `meshext serve` does once started
        control, cache = running.control, running.ads.cache
        assert isinstance(control, BenchControlPlane)
        assert isinstance(cache, TimedSnapshotCache)
        control.expected = args.proxies
        async with asyncio.timeout(60):
            while not control.loaded or not all(
                report.status.deployment.ready for report in control.reports()
            ):
                await asyncio.sleep(0.05)
        if source.errors or control.config_errors:
            raise RuntimeError(f"configuration errors: {control.config_errors}")
        extensions = len(control.reports())
        gc.collect()
        rss_idle = rss_bytes()
        print(json.dumps({"listening": running.xds_port}), flush=True)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(control.all_hold.wait(), args.timeout)
        except TimeoutError:
            print(
                f"only {len(control.holding)} of {args.proxies} proxies ACKed, "
                f"{len(running.ads.connections())} streams",
                file=sys.stderr,
            )
            raise
        connect_seconds = time.perf_counter() - started
        await control.quiet(1.0, args.timeout)
        connect_settled_seconds = time.perf_counter() - started
        gc.collect()
        rss_connected = rss_bytes()
        ecds_per_proxy = statistics.mean(
            len(record.extension_versions) for record in control.proxies()
        )
        workloads = len(
            {
                (record.proxy.namespace, tuple(sorted(record.proxy.workload.labels.items())))
                for record in control.proxies()
                if record.proxy is not None
            }
        )
        rounds = []
        for generation in range(1, args.rounds + 1):
            await asyncio.sleep(args.pause)
            await control.quiet(0.5, args.timeout)
            rounds.append(
                await change_round(control, cache, source, config, generation, gc_clock, args)
            )
        control.round = None
        result = {
            "connect_all_s": connect_seconds,
            "connect_settled_s": connect_settled_seconds,
            "rss_idle": rss_idle,
            "rss_connected": rss_connected,
            "extensions": extensions,
            "ecds_per_proxy": ecds_per_proxy,
            "workloads": workloads,
            "nacks": control.nacks,
            "disconnects": control.disconnects,
            "rounds": rounds,
        }
    watchdog.cancel()
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------- clients


class Proxy:
    """One simulated Envoy on its own connection."""

    def __init__(
        self,
        port: int,
        node_id: str,
        protocol: str,
        debug: bool,
        metadata: dict[str, Any] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.debug = debug
        self.metadata = metadata
        target = f"127.0.0.1:{port}"
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
        self.channel = (
            grpc.aio.insecure_channel(target, options=options)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=options)
        )
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.node_id = node_id
        self.protocol = protocol
        self.ecds_names: list[str] = []

    async def run(self) -> None:
        """Keep a stream open, reconnecting after a failure as Envoy does."""
        while True:
            try:
                if self.protocol == "sotw":
                    await self.sotw()
                else:
                    await self.delta()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                if self.debug:
                    print(f"{self.node_id}: {exc!r}"[:300], file=sys.stderr, flush=True)
                self.ecds_names = []
                await asyncio.sleep(0.5 + random.random())

    def node(self, request: Any) -> Any:
        request.node.id = self.node_id
        request.node.cluster = "bench"
        if self.metadata:
            request.node.metadata.update(self.metadata)
        return request

    async def sotw(self) -> None:
        call = self.stub.StreamAggregatedResources(wait_for_ready=True)
        await call.write(self.node(discovery_pb2.DiscoveryRequest(type_url=types.CLUSTER)))
        await call.write(discovery_pb2.DiscoveryRequest(type_url=types.LISTENER))
        async for response in call:
            names = self.ecds_names if response.type_url == types.EXTENSION_CONFIG else []
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                    resource_names=names,
                )
            )
            if response.type_url == types.LISTENER and not self.ecds_names:
                self.ecds_names = filter_names(response.resources)
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=types.EXTENSION_CONFIG, resource_names=self.ecds_names
                    )
                )

    async def delta(self) -> None:
        call = self.stub.DeltaAggregatedResources(wait_for_ready=True)
        await call.write(self.node(discovery_pb2.DeltaDiscoveryRequest(type_url=types.CLUSTER)))
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=types.LISTENER))
        async for response in call:
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=response.type_url, response_nonce=response.nonce
                )
            )
            if response.type_url == types.LISTENER and not self.ecds_names:
                self.ecds_names = filter_names(entry.resource for entry in response.resources)
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=types.EXTENSION_CONFIG,
                        resource_names_subscribe=self.ecds_names,
                    )
                )


def filter_names(packed: Any) -> list[str]:
    names: list[str] = []
    for entry in packed:
        message = listener_pb2.Listener()
        entry.Unpack(message)
        for chain in message.filter_chains:
            for network_filter in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                names.extend(f.name for f in hcm.http_filters if f.HasField("config_discovery"))
    return names


def proxy_credentials(ca: mesh_ca.CertificateAuthority, namespace: str) -> grpc.ChannelCredentials:
    """A key and certificate of its own for one simulated proxy, as Envoy would hold."""
    issued = ca.issue_workload(SpiffeId(ca.trust_domain, namespace, "default"))
    return grpc.ssl_channel_credentials(
        root_certificates=issued.bundle_pem,
        private_key=issued.key_pem,
        certificate_chain=issued.cert_pem,
    )


async def clients(args: argparse.Namespace) -> None:
    asyncio.create_task(exit_with_parent())  # noqa: RUF006 (runs until the process ends)
    ca = mesh_ca.load_or_create(Path(args.workdir) / "ca", "cluster.local") if args.mtls else None
    proxies = []
    for index in range(args.first, args.first + args.count):
        metadata: dict[str, Any] | None = None
        if args.through_control_plane:
            node_id, metadata = simulated_proxy(index)
        else:
            node_id = f"proxy-{index}"
            metadata = {"NAMESPACE": "bench"} if args.mtls else None
        credentials = None
        if ca is not None:
            assert metadata is not None
            credentials = proxy_credentials(ca, str(metadata["NAMESPACE"]))
        proxies.append(Proxy(args.port, node_id, args.protocol, args.debug, metadata, credentials))
    tasks = []
    for proxy in proxies:
        tasks.append(asyncio.create_task(proxy.run()))
        await asyncio.sleep(0)
    while True:
        await asyncio.sleep(10)
        if args.debug:
            waiting = sum(1 for proxy in proxies if not proxy.ecds_names)
            print(f"clients from {args.first}: {waiting} without a listener", file=sys.stderr)


# ------------------------------------------------------------------------------- driver


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def drive(args: argparse.Namespace) -> dict[str, Any]:
    if args.through_control_plane:
        if args.tune_gc:
            raise SystemExit("--through-control-plane tunes the collector as meshext serve does")
        missing = [
            name
            for name in ("header-append", "deny-unless-header", "request-counter")
            if not (MODULES / f"{name}.wasm").exists()
        ]
        if missing:
            raise SystemExit(f"missing {missing} in {MODULES}: run make -C examples/extensions")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="meshext-ads-scale-") as workdir:
        result = run_processes(args, Path(workdir))
    rounds = result.pop("rounds")
    summary = summarize(args, result, rounds)
    if args.through_control_plane:
        summary.update(summarize_control_plane(result, rounds))
    summary["machine"] = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    summary["load_avg_1m_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return summary


def run_processes(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the server and the client processes; the server's result, once all ended."""
    script = str(Path(__file__).resolve())
    python = sys.executable
    mode = ["--through-control-plane"] if args.through_control_plane else []
    mode += ["--mtls"] if args.mtls else []
    server = subprocess.Popen(
        [
            python,
            script,
            "serve",
            f"--proxies={args.proxies}",
            f"--rounds={args.rounds}",
            f"--pause={args.pause}",
            f"--timeout={args.timeout}",
            f"--workdir={workdir}",
            *mode,
            *(["--debug"] if args.debug else []),
            *(["--tune-gc"] if args.tune_gc else []),
            *([f"--profile={Path(args.profile).resolve()}"] if args.profile else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    client_processes: list[subprocess.Popen[bytes]] = []
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["listening"]
        share = -(-args.proxies // args.client_processes)
        client_processes = [
            subprocess.Popen(
                [
                    python,
                    script,
                    "clients",
                    f"--port={port}",
                    f"--protocol={args.protocol}",
                    f"--first={first}",
                    f"--count={min(share, args.proxies - first)}",
                    f"--workdir={workdir}",
                    *mode,
                    *(["--debug"] if args.debug else []),
                ],
                stderr=None if args.debug else subprocess.DEVNULL,
            )
            for first in range(0, args.proxies, share)
        ]
        result: dict[str, Any] = json.loads(server.stdout.readline())
        server.wait(timeout=30)
    finally:
        for process in client_processes:
            process.kill()
            process.wait()
        if server.poll() is None:
            server.kill()
            server.wait()
    return result


def summarize(
    args: argparse.Namespace, result: dict[str, Any], rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    all_acked = [round_["all_acked_s"] for round_ in rounds]
    latencies = [value for round_ in rounds for value in round_["latencies"]]
    connected = args.proxies
    summary: dict[str, Any] = {
        "proxies": connected,
        "protocol": args.protocol,
        "rounds": len(rounds),
        "client_processes": args.client_processes,
        "tune_gc": "as meshext serve" if args.through_control_plane else args.tune_gc,
        "xds": "mutual TLS" if args.mtls else "plaintext",
        "connect_all_s": round(result["connect_all_s"], 3),
        "all_acked_s_p50": round(statistics.median(all_acked), 3),
        "all_acked_s_p99": round(percentile(all_acked, 0.99), 3),
        "all_acked_s_max": round(max(all_acked), 3),
        "proxy_ack_s_p50": round(percentile(latencies, 0.50), 3),
        "proxy_ack_s_p99": round(percentile(latencies, 0.99), 3),
    }
    if "connect_server_cpu_s" in result:
        summary["connect_server_cpu_s"] = round(result["connect_server_cpu_s"], 3)
    if not args.through_control_plane:
        summary["publish_s_p50"] = round(statistics.median(r["publish_s"] for r in rounds), 4)
    summary.update(
        {
            "server_cpu_s_per_round_p50": round(
                statistics.median(r["server_cpu_s"] for r in rounds), 3
            ),
            "gc_s_per_round_p50": round(statistics.median(r["gc_s"] for r in rounds), 3),
            "rss_idle_mib": round(result["rss_idle"] / 2**20, 1),
            "rss_connected_mib": round(result["rss_connected"] / 2**20, 1),
            "rss_per_proxy_kib": round(
                (result["rss_connected"] - result["rss_idle"]) / connected / 1024, 1
            ),
            "nacks": result["nacks"],
        }
    )
    return summary


def summarize_control_plane(result: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The end-to-end mode's split of each change, as medians over rounds."""

    def median(key: str, digits: int = 3) -> float:
        return round(float(statistics.median(r[key] for r in rounds)), digits)

    return {
        "mode": "through-control-plane",
        "workloads": result["workloads"],
        "extensions": result["extensions"],
        "ecds_per_proxy": round(result["ecds_per_proxy"], 2),
        "connect_settled_s": round(result["connect_settled_s"], 3),
        "split_s_p50": {
            "folder_load": median("load_s"),
            "control_debounce": median("debounce_s"),
            "recompute": median("recompute_s"),
            "ads_push": median("push_s"),
        },
        "split_s_slowest_round": {
            key: round(max(rounds, key=lambda r: r["all_acked_s"])[f"{key}_s"], 3)
            for key in ("load", "debounce", "recompute", "push")
        },
        "changed_snapshots_p50": median("changed_snapshots", 0),
        "recomputes_during_push_p50": round(
            float(statistics.median(r["recomputes_until_acked"] - 1 for r in rounds)), 1
        ),
        "recompute_s_during_push_p50": round(
            float(
                statistics.median(r["recompute_s_until_acked"] - r["recompute_s"] for r in rounds)
            ),
            3,
        ),
        "recomputes_per_change_p50": median("recomputes", 1),
        "recompute_s_per_change_p50": median("recompute_s_total"),
        "server_cpu_s_until_acked_p50": median("server_cpu_s_until_acked"),
        "acked_not_offered": sum(r["acked_not_offered"] for r in rounds),
        "disconnects": result["disconnects"],
    }


def main() -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="log errors and progress")
    common.add_argument(
        "--mtls", action="store_true", help="xDS over mutual TLS (meshext serve's default)"
    )
    common.add_argument(
        "--through-control-plane",
        action="store_true",
        help="run the real control plane over a config folder and change an extension "
        "there each round (end to end), instead of publishing snapshots directly",
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command")
    serve_args = sub.add_parser("serve", parents=[common])
    serve_args.add_argument("--proxies", type=int, required=True)
    serve_args.add_argument("--rounds", type=int, required=True)
    serve_args.add_argument("--pause", type=float, required=True)
    serve_args.add_argument("--timeout", type=float, required=True)
    serve_args.add_argument("--port", type=int, default=0)
    serve_args.add_argument("--tune-gc", action="store_true")
    serve_args.add_argument("--profile", default=None)
    serve_args.add_argument("--workdir", required=True)
    client_args = sub.add_parser("clients", parents=[common])
    client_args.add_argument("--port", type=int, required=True)
    client_args.add_argument("--protocol", choices=["sotw", "delta"], required=True)
    client_args.add_argument("--first", type=int, required=True)
    client_args.add_argument("--count", type=int, required=True)
    client_args.add_argument("--workdir", required=True)
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--protocol", choices=["sotw", "delta"], default="sotw")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument(
        "--profile",
        default=None,
        metavar="PREFIX",
        help="profile the server's event loop with cProfile: PREFIX-connect.prof and "
        "PREFIX-rounds.prof (the profiler slows the server: its times are not comparable)",
    )
    parser.add_argument(
        "--tune-gc",
        action="store_true",
        help="in the server, once every proxy is connected: gc.freeze() and a higher "
        "gen0 threshold",
    )
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve_control_plane(args) if args.through_control_plane else serve(args))
    elif args.command == "clients":
        asyncio.run(clients(args))
    else:
        # Let `timeout` or Ctrl-C end the run through the cleanup of the processes.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        print(json.dumps(drive(args), indent=2))


if __name__ == "__main__":
    main()
