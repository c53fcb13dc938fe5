"""Soak and overhead benchmark of the example extensions in a real Envoy.

Starts two Envoys on loopback: a backend answering every request itself (a direct
response, so the backend costs little), and a sidecar built by meshext's generator
(files-based xDS, local module delivery) in front of it. Then:

1. overhead: drives the sidecar with ``wrk`` for a fixed time with no extensions
   (the anchors only) and with all three examples, and compares throughput and latency;
2. soak: drives the sidecar with all three examples until the request target is
   reached, sampling Envoy's RSS and the modules' linear memory (the
   ``meshext_examples.*.wasm_memory_bytes`` gauges) between chunks.

Results go to results.json and to the results section of README.md.

    python benchmarks/extensions_soak/soak.py [--requests 3000000] [--chunk-seconds 30]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.envoy.bootstrap import sidecar_bootstrap
from meshext.envoy.files import ConfigDirectory, config_files
from meshext.envoy.node import DeliveryMode, HostPort, ProxyInfo
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.wasm import ModuleDelivery
from meshext.mesh.extension import Extension
from meshext.mesh.planner import PlannedExtension, WorkloadPlan
from meshext.mesh.resolution import ImageFormat, ResolvedModule
from meshext.mesh.workload import Workload

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD = REPO / "examples" / "extensions" / "build"
ENVOY = Path(sys.executable).with_name("envoy")
MARK_BEGIN = "<!-- results:begin -->"
MARK_END = "<!-- results:end -->"
TOKEN_HEADER = ("x-token", "s3cret")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def module(name: str) -> ResolvedModule:
    path = BUILD / f"{name}.wasm"
    data = path.read_bytes()
    return ResolvedModule(
        hashlib.sha256(data).hexdigest(), str(path), len(data), None, ImageFormat.LOCAL_FILE
    )


def extension(name: str, phase: Phase, config: str, module_name: str) -> PlannedExtension:
    ext = Extension(
        key=ResourceKey("ServiceMeshExtension", "bench", name),
        generation=1,
        image=f"example/{module_name}:1",
        selector={},
        config=config,
        phase=phase,
        priority=0,
    )
    return PlannedExtension(ext, phase, 0, module(module_name))


def all_examples() -> list[PlannedExtension]:
    return sorted(
        [
            extension(
                "require-token",
                Phase.PRE_AUTHZ,
                '{"name":"x-token","value":"s3cret"}',
                "deny-unless-header",
            ),
            extension("header-append", Phase.POST_AUTHZ, "soak", "header-append"),
            extension("count-requests", Phase.PRE_STATS, "soak_requests_total", "request-counter"),
        ],
        key=PlannedExtension.sort_key,
    )


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    admin_port: int
    port: int

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=10) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and re.fullmatch(r"-?\d+", value):
                values[name] = int(value)
        return values

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def wasm_memory_bytes(self) -> int:
        return sum(
            v for k, v in self.stats().items() if k.startswith("wasmcustom.meshext_examples.")
        )


@contextmanager
def run_envoy(
    workdir: Path, bootstrap: dict[str, Any], admin_port: int, port: int
) -> Iterator[Envoy]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    process = subprocess.Popen(
        [
            str(ENVOY),
            "--config-path",
            str(config),
            "--concurrency",
            "1",
            "--base-id",
            str(admin_port),
            "--disable-hot-restart",
            "--log-level",
            "warning",
            "--log-path",
            str(workdir / "envoy.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    envoy = Envoy(process, admin_port, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Envoy exited: {(workdir / 'envoy.log').read_text()[-2000:]}")
            try:
                if envoy.stats().get("listener_manager.total_listeners_active", 0) >= 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Envoy did not become ready")
            time.sleep(0.2)
        yield envoy
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def backend_bootstrap(port: int, admin_port: int) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "backend",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "backend",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
                }
            ]
        },
    }


@contextmanager
def sidecar(
    workdir: Path, backend_port: int, extensions: list[PlannedExtension]
) -> Iterator[Envoy]:
    port, admin_port = free_port(), free_port()
    workload = Workload("bench", {"app": "bench"}, name="bench")
    info = ProxyInfo(
        f"sidecar~bench~{port}", workload, port, HostPort("127.0.0.1", backend_port), "127.0.0.1"
    )
    directory = ConfigDirectory(str(workdir / "xds"))
    resources = proxy_resources(
        info,
        WorkloadPlan(workload, tuple(extensions), ()),
        ModuleDelivery(),
        config_source=directory,
    )
    for path, text in config_files(resources, directory).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    bootstrap = sidecar_bootstrap(
        name="bench",
        namespace="bench",
        labels={"app": "bench"},
        listen=f"127.0.0.1:{port}",
        app=f"127.0.0.1:{backend_port}",
        xds=directory,
        admin_port=admin_port,
        node_id=info.node_id,
        module_delivery=DeliveryMode.LOCAL,
    )
    with run_envoy(workdir, bootstrap, admin_port, port) as envoy:
        check = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=dict([TOKEN_HEADER]))
        with urllib.request.urlopen(check, timeout=10) as r:
            assert r.status == 200
        yield envoy


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]
    errors: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "rps": round(self.rps, 1),
            "latency_ms": self.latency_ms,
            "errors": self.errors,
        }


def _millis(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(port: int, seconds: int, connections: int) -> WrkResult:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"{TOKEN_HEADER[0]}: {TOKEN_HEADER[1]}",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert total is not None, out
    assert rps is not None, out
    latency = {
        p: _millis(v)
        for p, v in re.findall(r"^\s+(50%|75%|90%|99%)\s+([\d.]+\w+)", out, re.MULTILINE)
    }
    mean = re.search(r"Latency\s+([\d.]+\w+)", out)
    if mean:
        latency["mean"] = _millis(mean.group(1))
    errors = "; ".join(
        line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line
    )
    return WrkResult(int(total.group(1)), seconds, float(rps.group(1)), latency, errors)


def measure_overhead(workdir: Path, backend_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both sidecars up at once, driven in alternating rounds; medians per chain.

    Alternating spreads the noise of a shared machine over both chains alike.
    """
    chains = {"anchors only": [], "three examples": all_examples()}
    rounds: dict[str, list[WrkResult]] = {label: [] for label in chains}
    with (
        sidecar(workdir / "bare", backend_port, chains["anchors only"]) as bare,
        sidecar(workdir / "examples", backend_port, chains["three examples"]) as full,
    ):
        envoys = {"anchors only": bare, "three examples": full}
        for envoy in envoys.values():
            wrk(envoy.port, 3, args.connections)
        for number in range(args.overhead_rounds):
            for label, envoy in envoys.items():
                rounds[label].append(wrk(envoy.port, args.overhead_seconds, args.connections))
                print(
                    f"overhead round {number + 1} {label}: {rounds[label][-1].as_dict()}",
                    flush=True,
                )

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return {
        label: {
            "rounds": len(results),
            "seconds_per_round": args.overhead_seconds,
            "rps": median([r.rps for r in results]),
            "latency_ms": {
                key: median([r.latency_ms.get(key, 0.0) for r in results])
                for key in ("mean", "50%", "99%")
            },
        }
        for label, results in rounds.items()
    }


def soak(workdir: Path, backend_port: int, args: argparse.Namespace) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    with sidecar(workdir / "soak", backend_port, all_examples()) as envoy:
        wrk(envoy.port, 3, args.connections)
        start_stats = envoy.stats()
        start = {"requests": 0, "rss": envoy.rss_bytes(), "wasm": envoy.wasm_memory_bytes()}
        samples.append(start)
        done = 0
        began = time.monotonic()
        while done < args.requests:
            result = wrk(envoy.port, args.chunk_seconds, args.connections)
            done += result.requests
            sample = {
                "requests": done,
                "rss": envoy.rss_bytes(),
                "wasm": envoy.wasm_memory_bytes(),
                "rps": round(result.rps),
                "errors": result.errors,
            }
            samples.append(sample)
            print(f"soak {sample}", flush=True)
        end_stats = envoy.stats()
        elapsed = time.monotonic() - began
        prefix = f"http.inbound_{envoy.port}"
    counter = "wasmcustom.soak_requests_total"
    return {
        "requests": done,
        "seconds": round(elapsed),
        "counted_by_request_counter": end_stats[counter] - start_stats[counter],
        "responses_2xx": end_stats.get(f"{prefix}.downstream_rq_2xx", 0)
        - start_stats.get(f"{prefix}.downstream_rq_2xx", 0),
        "rss_start": start["rss"],
        "rss_after_first_chunk": samples[1]["rss"],
        "rss_end": samples[-1]["rss"],
        "wasm_memory_start": start["wasm"],
        "wasm_memory_end": samples[-1]["wasm"],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3_000_000, help="soak target")
    parser.add_argument("--chunk-seconds", type=int, default=30)
    parser.add_argument("--overhead-seconds", type=int, default=10)
    parser.add_argument("--overhead-rounds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--only", choices=["overhead", "soak"], help="run one part, keep the other's results"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run benchmarks/extensions_soak/run.sh")
    results_path = HERE / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(
        {
            "envoy": subprocess.run(
                [str(ENVOY), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "cpus": os.cpu_count(),
            "connections": args.connections,
        }
    )
    workdir = Path(tempfile.mkdtemp(prefix="meshext-soak-"))
    backend_port, backend_admin = free_port(), free_port()
    try:
        backend = backend_bootstrap(backend_port, backend_admin)
        with run_envoy(workdir / "backend", backend, backend_admin, backend_port):
            if args.only in (None, "overhead"):
                results["overhead"] = measure_overhead(workdir, backend_port, args)
            if args.only in (None, "soak"):
                results["soak"] = soak(workdir, backend_port, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    if "overhead" in results and "soak" in results:
        write_readme(results)


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def write_readme(results: dict[str, Any]) -> None:
    soak = results["soak"]
    overhead = results["overhead"]
    base, ext = overhead["anchors only"], overhead["three examples"]
    lines = [
        MARK_BEGIN,
        f"Envoy `{results['envoy'].split('version: ')[-1]}`, {results['cpus']} shared CPUs, wrk 1 thread, "
        f"{results['connections']} connections, sidecar and backend Envoy at `--concurrency 1`.",
        "",
        "**Soak** (all three examples on one sidecar):",
        "",
        "| requests | duration | counted by request-counter | Envoy RSS start → after first chunk → end | growth after first chunk | modules' linear memory start → end |",
        "|---|---|---|---|---|---|",
        f"| {soak['requests']:,} | {soak['seconds']} s | {soak['counted_by_request_counter']:,} | "
        f"{_mib(soak['rss_start'])} → {_mib(soak['rss_after_first_chunk'])} → {_mib(soak['rss_end'])} | "
        f"{_mib(soak['rss_end'] - soak['rss_after_first_chunk'])} | "
        f"{soak['wasm_memory_start'] // 1024} KiB → {soak['wasm_memory_end'] // 1024} KiB |",
        "",
        "Samples (requests: RSS / modules' linear memory):",
        "",
        "```",
        *(
            f"{s['requests']:>10,}  rss {_mib(s['rss']):>10}  wasm {s['wasm'] // 1024:>6} KiB"
            for s in soak["samples"]
        ),
        "```",
        "",
        "**Per-request overhead** (two sidecars, one without extensions, driven in "
        "alternating rounds; medians over the rounds):",
        "",
        "| chain | requests/s | mean | p50 | p99 |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {r['rps']:,.0f} | {r['latency_ms'].get('mean', 0):.2f} ms | "
            f"{r['latency_ms'].get('50%', 0):.2f} ms | {r['latency_ms'].get('99%', 0):.2f} ms |"
            for label, r in overhead.items()
        ),
        "",
        f"The three wasm filters cost {100 * (1 - ext['rps'] / base['rps']):.1f} % of throughput: "
        f"{(1 / ext['rps'] - 1 / base['rps']) * 1e6:.0f} µs more proxy time per request at "
        "saturation (requests/s is what one Envoy worker sustains here, so this is CPU "
        "time per request on a shared, contended CPU, where mean latency mostly reflects "
        "queueing behind the 16 connections).",
        MARK_END,
    ]
    readme = HERE / "README.md"
    text = readme.read_text()
    before, _, rest = text.partition(MARK_BEGIN)
    _, _, after = rest.partition(MARK_END)
    readme.write_text(before + "\n".join(lines) + after)


if __name__ == "__main__":
    main()
