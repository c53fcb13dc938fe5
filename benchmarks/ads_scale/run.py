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

Prints one JSON object with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


async def serve(args: argparse.Namespace) -> None:
    if args.debug:
        logging.basicConfig(level=logging.WARNING)
    gc_clock = GcClock()
    cache = SnapshotCache()
    bench = Bench(cache, args.proxies)
    server = AdsServer(cache, bench)
    gc.collect()
    rss_idle = rss_bytes()
    port = await server.start(f"127.0.0.1:{args.port}")
    print(json.dumps({"listening": port}), flush=True)
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
        cpu = time.process_time()
        bench.started = time.perf_counter()
        for node_id in cache.node_ids():
            cache.set_snapshot(node_id, bench.resources.snapshot())
        published = time.perf_counter() - bench.started
        await asyncio.wait_for(bench.done.wait(), args.timeout)
        cpu = time.process_time() - cpu
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
    print(
        json.dumps(
            {
                "connect_all_s": connect_seconds,
                "rss_idle": rss_idle,
                "rss_connected": rss_connected,
                "nacks": bench.nacks,
                "rounds": rounds,
            }
        ),
        flush=True,
    )


# ------------------------------------------------------------------------------- clients


class Proxy:
    """One simulated Envoy on its own connection."""

    def __init__(self, port: int, node_id: str, protocol: str, debug: bool) -> None:
        self.debug = debug
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)],
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


async def clients(args: argparse.Namespace) -> None:
    proxies = [
        Proxy(args.port, f"proxy-{index}", args.protocol, args.debug)
        for index in range(args.first, args.first + args.count)
    ]
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
    script = str(Path(__file__).resolve())
    python = sys.executable
    server = subprocess.Popen(
        [
            python,
            script,
            "serve",
            f"--proxies={args.proxies}",
            f"--rounds={args.rounds}",
            f"--pause={args.pause}",
            f"--timeout={args.timeout}",
            *(["--debug"] if args.debug else []),
            *(["--tune-gc"] if args.tune_gc else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
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
                *(["--debug"] if args.debug else []),
            ],
            stderr=None if args.debug else subprocess.DEVNULL,
        )
        for first in range(0, args.proxies, share)
    ]
    try:
        result = json.loads(server.stdout.readline())
        server.wait(timeout=30)
    finally:
        for process in client_processes:
            process.kill()
            process.wait()
        if server.poll() is None:
            server.kill()
            server.wait()
    rounds = result.pop("rounds")
    all_acked = [round_["all_acked_s"] for round_ in rounds]
    latencies = [value for round_ in rounds for value in round_["latencies"]]
    connected = args.proxies
    return {
        "proxies": connected,
        "protocol": args.protocol,
        "rounds": len(rounds),
        "client_processes": args.client_processes,
        "tune_gc": args.tune_gc,
        "connect_all_s": round(result["connect_all_s"], 3),
        "all_acked_s_p50": round(statistics.median(all_acked), 3),
        "all_acked_s_p99": round(percentile(all_acked, 0.99), 3),
        "all_acked_s_max": round(max(all_acked), 3),
        "proxy_ack_s_p50": round(percentile(latencies, 0.50), 3),
        "proxy_ack_s_p99": round(percentile(latencies, 0.99), 3),
        "publish_s_p50": round(statistics.median(r["publish_s"] for r in rounds), 4),
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
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
    }


def main() -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="log errors and progress")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command")
    serve_args = sub.add_parser("serve", parents=[common])
    serve_args.add_argument("--proxies", type=int, required=True)
    serve_args.add_argument("--rounds", type=int, required=True)
    serve_args.add_argument("--pause", type=float, required=True)
    serve_args.add_argument("--timeout", type=float, required=True)
    serve_args.add_argument("--port", type=int, default=0)
    serve_args.add_argument("--tune-gc", action="store_true")
    client_args = sub.add_parser("clients", parents=[common])
    client_args.add_argument("--port", type=int, required=True)
    client_args.add_argument("--protocol", choices=["sotw", "delta"], required=True)
    client_args.add_argument("--first", type=int, required=True)
    client_args.add_argument("--count", type=int, required=True)
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--protocol", choices=["sotw", "delta"], default="sotw")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument(
        "--tune-gc",
        action="store_true",
        help="in the server, once every proxy is connected: gc.freeze() and a higher "
        "gen0 threshold",
    )
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve(args))
    elif args.command == "clients":
        asyncio.run(clients(args))
    else:
        print(json.dumps(drive(args), indent=2))


if __name__ == "__main__":
    main()
