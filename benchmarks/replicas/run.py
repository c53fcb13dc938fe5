"""Several ``meshext serve`` replicas on one config folder, each with its own proxies.

The question: what one replica costs when a fleet of proxies is spread over several
replicas behind a load balancer, so that the cost of a larger fleet can be worked out
from it. This script:

1. models a mesh of ``--mesh-proxies`` proxies (the ``realistic`` scenario of
   ``benchmarks/xds_vs_go_control_plane``: 10 namespaces, 10 replicas per workload,
   3 to 5 extensions each, 42 ServiceMeshExtensions) spread uniformly at random
   (seeded) over ``--mesh-proxies / --proxies-per-replica`` meshext replicas, as a
   layer-4 balancer spreads connections, and keeps the share of the first
   ``--replicas`` of them: so each measured replica serves the mix of workloads one
   replica of the big mesh would (about 2,000 distinct workloads for 2,500 proxies
   when the mesh has 50,000 proxies in 5,000 workloads);
2. writes one config folder and starts ``--replicas`` ``meshext serve`` processes on
   it (plaintext xDS on loopback, as the load client speaks it; one shared module
   cache path, so every replica names modules by the same file);
3. runs one Go load client per replica (``cmd/loadclient`` of that benchmark, built
   by its ``build.sh``), each simulating that replica's proxies. Each round, every
   client asks this script's coordinator for the change; once all have asked, the
   coordinator rewrites the changed extension's file once, and each client waits
   until its proxies have ACKed the new extension config;
4. prints one JSON object: per replica, its CPU per change (utime + stime of the
   process, from the change until 1 s after its last proxy ACKed), its RSS with its
   proxies connected, its change → all ACKed time; and across replicas, the time
   from the file write until the last proxy of every replica ACKed.

A client's own timings start when it asks for the change, so the coordinator records
how long each client waited for the others and that wait is subtracted from the
client's figures (latency, and idle CPU times the wait). The Go programs and the
scenario helpers are those of ``benchmarks/xds_vs_go_control_plane`` (loaded from its
``run.py`` by path). Every process listens on 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEER_BENCHMARK = ROOT / "benchmarks" / "xds_vs_go_control_plane" / "run.py"
BARRIER_TIMEOUT_S = 900.0


def load_peer_benchmark() -> ModuleType:
    """The scenario, build and process helpers of benchmarks/xds_vs_go_control_plane."""
    spec = importlib.util.spec_from_file_location("xds_vs_go_control_plane_run", PEER_BENCHMARK)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {PEER_BENCHMARK}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = load_peer_benchmark()


def replica_shares(
    mesh_proxies: int, per_replica: int, measured: int, seed: int
) -> tuple[Any, list[list[Any]]]:
    """The big mesh's scenario, and the workloads (with their replica counts on that
    meshext replica) of each of the first ``measured`` meshext replicas."""
    workloads_per_namespace = max(1, mesh_proxies // (10 * 10))
    mesh = bench.realistic(namespaces=10, per_namespace=workloads_per_namespace, replicas=10)
    proxies = [w for w in mesh.workloads for _ in range(w.replicas)]
    rng = random.Random(seed)
    rng.shuffle(proxies)
    replicas = max(1, len(proxies) // per_replica)
    shares: list[list[Any]] = []
    for index in range(measured):
        mine = proxies[index::replicas]
        counts = Counter(id(w) for w in mine)
        shares.append(
            [
                dataclasses.replace(w, replicas=counts[id(w)])
                for w in mesh.workloads
                if id(w) in counts
            ]
        )
    return mesh, shares


class ChangeCoordinator:
    """An HTTP endpoint the load clients ask for each change (``POST /change/<client>``):
    the change is made once, when every client has asked for that round."""

    def __init__(self, clients: int, change_file: Path, template: Path) -> None:
        self.clients = clients
        self.change_file = change_file
        self.template = template.read_text()
        self.waits: dict[int, dict[int, float]] = {c: {} for c in range(clients)}
        self.written_at: dict[int, float] = {}
        self._arrived: dict[int, dict[int, float]] = {}
        self._condition = threading.Condition()
        coordinator = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                path, _, query = self.path.partition("?")
                client = int(path.rsplit("/", 1)[-1])
                round_ = int(dict(p.split("=") for p in query.split("&"))["round"])
                ok = coordinator.change(client, round_)
                self.send_response(200 if ok else 504)
                self.end_headers()
                self.wfile.write(b"ok\n" if ok else b"the other clients never asked\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/change"

    def change(self, client: int, round_: int) -> bool:
        with self._condition:
            arrived = self._arrived.setdefault(round_, {})
            arrived[client] = time.monotonic()
            if len(arrived) == self.clients:
                text = self.template.replace("{{ROUND}}", str(round_))
                temporary = self.change_file.with_name(f".{self.change_file.name}.tmp")
                temporary.write_text(text)
                temporary.rename(self.change_file)
                self.written_at[round_] = time.monotonic()
                self._condition.notify_all()
            done = self._condition.wait_for(
                lambda: round_ in self.written_at, timeout=BARRIER_TIMEOUT_S
            )
            if done:
                self.waits[client][round_] = self.written_at[round_] - arrived[client]
            return done

    def __enter__(self) -> ChangeCoordinator:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_share(work: Path, index: int, workloads: list[Any]) -> Path:
    path = work / f"scenario-{index}.json"
    path.write_text(json.dumps({"workloads": [w.as_json() for w in workloads]}, indent=1))
    return path


def serve_argv(config: Path, work: Path, xds: str, admin: str) -> list[str]:
    return [
        str(bench.MESHEXT), "serve", "--config", str(config),
        "--xds-address", xds, "--admin-address", admin,
        "--module-address", f"127.0.0.1:{bench.free_port()}",
        "--cache-dir", str(work / "module-cache"),
        "--local-images", str(bench.MODULES),
        "--log-level", "warning", "--insecure-xds",
    ]  # fmt: skip


def corrected(result: dict[str, Any], waits: dict[int, float]) -> dict[str, Any]:
    """One client's figures with its wait for the other clients taken out."""
    rounds = sorted(waits)
    idle = float(result["server_cpu_idle_per_s"])
    latency = [a - waits[r] for a, r in zip(result["all_acked_s"], rounds, strict=True)]
    cpu = [c - idle * waits[r] for c, r in zip(result["server_cpu_s"], rounds, strict=True)]
    return {
        "proxies": result["proxies"],
        "workloads": result["workloads"],
        "connect_all_s": result["connect_all_s"],
        "server_cpu_connect_s": result["server_cpu_connect_s"],
        "server_cpu_idle_per_s": idle,
        "server_cpu_per_change_s": round(statistics.median(cpu), 3),
        "server_cpu_per_change_s_rounds": [round(c, 3) for c in cpu],
        "all_acked_s_median": round(statistics.median(latency), 3),
        "all_acked_s_rounds": [round(x, 3) for x in latency],
        "per_proxy_p50_s": result["per_proxy_p50_s"],
        "per_proxy_p99_s": result["per_proxy_p99_s"],
        "server_rss_connected_mib": result["server_rss_connected_mib"],
        "server_rss_max_mib": result["server_rss_max_mib"],
        "barrier_wait_s_rounds": [round(waits[r], 3) for r in rounds],
        "nacks": result["nacks"],
        "stream_errors": result["stream_errors"],
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    mesh, shares = replica_shares(
        args.mesh_proxies, args.proxies_per_replica, args.replicas, args.seed
    )
    config, template, _ = bench.write_scenario(mesh, work)
    scenario_files = [write_share(work, i, share) for i, share in enumerate(shares)]
    bins = bench.build()
    with contextlib.ExitStack() as stack:
        servers = []
        for index in range(args.replicas):
            xds, admin = f"127.0.0.1:{bench.free_port()}", f"127.0.0.1:{bench.free_port()}"
            argv = serve_argv(config, work, xds, admin)
            process = stack.enter_context(bench.started(argv, work / f"meshext-{index}.log"))
            servers.append((xds, admin, process))
        count = len(mesh.extensions) + 1
        for _, admin, process in servers:
            bench.wait_for(
                "meshext resolving every image",
                lambda admin=admin: bench.all_resolved(f"http://{admin}", count),
                300,
                process,
            )
        coordinator = stack.enter_context(
            ChangeCoordinator(args.replicas, config / bench.CHANGED_FILE, template)
        )
        load_before, uptime_before = bench.load_average(), uptime()

        def client(index: int) -> dict[str, Any]:
            xds, _, process = servers[index]
            flags = {
                "target": xds,
                "scenario": str(scenario_files[index]),
                "rounds": str(args.rounds),
                "trigger-url": f"{coordinator.url}/{index}",
                "server-pid": str(process.pid),
                "timeout": f"{args.timeout:.0f}s",
            }
            result: dict[str, Any] = bench.run_client(
                bins, bench.go_flags(flags), work / f"client-{index}.log", args.timeout + 60
            )
            return result

        with ThreadPoolExecutor(max_workers=args.replicas) as pool:
            results = list(pool.map(client, range(args.replicas)))
        load_after, uptime_after = bench.load_average(), uptime()
    replicas = [corrected(r, coordinator.waits[i]) for i, r in enumerate(results)]
    rounds = sorted(coordinator.written_at)
    across = [max(r["all_acked_s_rounds"][k] for r in replicas) for k in range(len(rounds))]
    return {
        "replicas": replicas,
        "all_replicas_all_acked_s_rounds": [round(x, 3) for x in across],
        "all_replicas_all_acked_s_median": round(statistics.median(across), 3),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        "mesh": {
            "proxies": mesh.proxies,
            "workloads": len(mesh.workloads),
            "extensions": len(mesh.extensions) + 1,
            "meshext_replicas": max(1, mesh.proxies // args.proxies_per_replica),
        },
    }


def extrapolate(measured: dict[str, Any], per_replica: int, target: int) -> dict[str, Any]:
    """The fleet of ``target`` proxies as ``target / per_replica`` replicas, each costing
    what a measured replica cost (medians over the measured replicas)."""
    replicas = measured["replicas"]
    needed = -(-target // per_replica)
    cpu = statistics.median(r["server_cpu_per_change_s"] for r in replicas)
    rss = statistics.median(r["server_rss_connected_mib"] for r in replicas)
    cpu_connect = statistics.median(r["server_cpu_connect_s"] for r in replicas)
    return {
        "proxies": target,
        "replicas": needed,
        "per_replica_cpu_per_change_s": round(cpu, 3),
        "total_cpu_per_change_s": round(cpu * needed, 2),
        "per_replica_rss_mib": round(rss, 1),
        "total_rss_gib": round(rss * needed / 1024, 2),
        "per_replica_cpu_connect_s": round(cpu_connect, 2),
        # Every replica does its share in parallel, so the fleet's change -> all ACKed is
        # what the measured replicas took together, on no more CPU per replica than here.
        "change_to_all_acked_s_at_most": measured["all_replicas_all_acked_s_median"],
        "cpu_cores_per_replica_here": round((os.cpu_count() or 1) / len(replicas), 2),
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    bench.stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=4, help="meshext replicas measured")
    parser.add_argument("--proxies-per-replica", type=int, default=2500)
    parser.add_argument(
        "--mesh-proxies", type=int, default=50_000, help="the mesh the replicas are a share of"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="per client, in seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if not bench.MESHEXT.exists():
        raise SystemExit(f"{bench.MESHEXT} is missing: run `make setup` first")
    work = Path(tempfile.mkdtemp(prefix="meshext-replicas-"))
    try:
        measured = run(args, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    commit = bench.head_commit()
    text = json.dumps(
        {
            "commit": commit,
            "cpus": os.cpu_count(),
            "measured_replicas": args.replicas,
            "proxies_per_replica": args.proxies_per_replica,
            **measured,
            "extrapolated": extrapolate(measured, args.proxies_per_replica, args.mesh_proxies),
        },
        indent=2,
    )
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
