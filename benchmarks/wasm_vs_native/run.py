"""The example header-append extension in a real Envoy against Envoy's native filter
doing the same work (``envoy.filters.http.header_mutation``).

Starts, on loopback, one backend Envoy that answers every request itself and one
sidecar Envoy per variant in front of it, all at ``--concurrency 1``:

- ``none``: the HTTP connection manager with the router only;
- ``native-N``: N ``header_mutation`` filters, each appending one request header;
- ``wasm-N``: N instances of ``examples/extensions/header-append``, configured the way
  meshext deploys them (the filter config is meshext's ``extension_config`` output:
  one shared VM per module, the module read from a local file), each appending one
  header;
- ``baseline-N`` (with ``--baseline-module``): the same with another build of the
  module, e.g. an older one, so one run reports before and after.

The backend answers 200 only when the request carries the first appended header with
the expected value (the ``none`` variant's client sends it itself), otherwise 421, so a
wrk run whose responses are all 2xx proves every request passed the filters.

``wrk`` drives the variants in alternating rounds (the noise of a shared machine
falls on all alike). Per run: the sidecar's CPU time (utime + stime from
``/proc/<pid>/stat``) divided by the requests wrk completed, wrk's throughput and
latency percentiles. Medians over rounds are reported, with the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.envoy.node import DeliveryMode
from meshext.envoy.wasm import ModuleDelivery, extension_config
from meshext.mesh.extension import Extension
from meshext.mesh.planner import PlannedExtension
from meshext.mesh.resolution import ImageFormat, ResolvedModule

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODULE = ROOT / "examples" / "extensions" / "build" / "header-append.wasm"
ENVOY = Path(sys.executable).with_name("envoy")
HEADER_VALUE = "bench"
HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def header_name(index: int) -> str:
    return f"x-bench-{index}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def listener(port: int, route_config: dict[str, Any], filters: list[Any]) -> dict[str, Any]:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "bench",
        "route_config": route_config,
        "http_filters": [*filters, ROUTER],
    }
    return {
        "name": "bench",
        "address": address(port),
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }


def bootstrap(admin_port: int, listeners: list[Any], clusters: list[Any]) -> dict[str, Any]:
    return {
        "admin": {"address": address(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def backend(port: int, admin_port: int) -> dict[str, Any]:
    def direct(status: int) -> dict[str, Any]:
        return {"status": status, "body": {"inline_string": f"{status}\n"}}

    routes = [
        {
            "match": {
                "prefix": "/",
                "headers": [
                    {"name": header_name(0), "string_match": {"exact": HEADER_VALUE}},
                ],
            },
            "direct_response": direct(200),
        },
        {"match": {"prefix": "/"}, "direct_response": direct(421)},
    ]
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}
    return bootstrap(admin_port, [listener(port, route_config, [])], [])


def native_filter(index: int) -> dict[str, Any]:
    append = {
        "header": {"key": header_name(index), "value": HEADER_VALUE},
        "append_action": "APPEND_IF_EXISTS_OR_ADD",
    }
    return {
        "name": f"native-{index}",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": append}]},
        },
    }


def wasm_filter(index: int, path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    module = ResolvedModule(
        hashlib.sha256(data).hexdigest(), str(path), len(data), None, ImageFormat.LOCAL_FILE
    )
    config = json.dumps({"name": header_name(index), "value": HEADER_VALUE})
    ext = Extension(
        key=ResourceKey("ServiceMeshExtension", "bench", f"header-append-{index}"),
        generation=1,
        image="example/header-append:1",
        selector={},
        config=config,
        phase=Phase.POST_AUTHZ,
        priority=index,
    )
    planned = PlannedExtension(ext, Phase.POST_AUTHZ, index, module)
    message = extension_config(planned, DeliveryMode.LOCAL, ModuleDelivery())
    as_json: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return {"name": as_json["name"], "typed_config": as_json["typed_config"]}


def sidecar(port: int, admin_port: int, backend_port: int, filters: list[Any]) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]}
    cluster = {
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(backend_port)}}]}],
        },
    }
    return bootstrap(admin_port, [listener(port, route_config, filters)], [cluster])


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def listening(self) -> bool:
        url = f"http://127.0.0.1:{self.admin_port}/listeners"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return b"bench" in response.read()
        except OSError:
            return False


@contextlib.contextmanager
def envoy(
    work: Path, name: str, config: dict[str, Any], port: int, admin_port: int
) -> Iterator[Envoy]:
    path = work / f"{name}.json"
    path.write_text(json.dumps(config))
    log = work / f"{name}.log"
    process = subprocess.Popen(
        [
            str(ENVOY),
            "--config-path",
            str(path),
            "--concurrency",
            "1",
            "--base-id",
            str(admin_port),
            "--disable-hot-restart",
            "--log-level",
            "warning",
            "--log-path",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proxy = Envoy(process, port, admin_port)
    try:
        deadline = time.monotonic() + 60
        while not proxy.listening():
            if process.poll() is not None:
                raise SystemExit(f"Envoy {name} exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"Envoy {name} did not start listening within 60 s")
            time.sleep(0.2)
        yield proxy
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def status_of(proxy: Envoy) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/", timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class Run:
    requests: int
    non_2xx: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    load1: float


def millis(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"wrk latency {text!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[match.group(2)]
    return float(match.group(1)) * scale


def drive(proxy: Envoy, seconds: int, connections: int, send_header: bool) -> Run:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if send_header:
        argv += ["-H", f"{header_name(0)}: {HEADER_VALUE}"]
    before = proxy.cpu_seconds()
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{proxy.port}/"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    cpu = proxy.cpu_seconds() - before
    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if total is None or rps is None or p50 is None or p99 is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    requests = int(total.group(1))
    return Run(
        requests=requests,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        rps=float(rps.group(1)),
        p50_ms=millis(p50.group(1)),
        p99_ms=millis(p99.group(1)),
        cpu_us_per_request=cpu / max(requests, 1) * 1e6,
        load1=os.getloadavg()[0],
    )


def summary(runs: list[Run]) -> dict[str, Any]:
    return {
        "rounds": len(runs),
        "requests": sum(r.requests for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
        "rps_median": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms_median": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms_median": round(statistics.median(r.p99_ms for r in runs), 3),
        "cpu_us_per_request_median": round(
            statistics.median(r.cpu_us_per_request for r in runs), 2
        ),
        "load1": [round(r.load1, 2) for r in runs],
    }


def median_cpu(runs: list[Run]) -> float:
    return statistics.median(r.cpu_us_per_request for r in runs)


def extra_ratio(runs: dict[str, list[Run]], variant: str, n: int) -> float | None:
    """What the wasm filters add to a request's CPU over what the native ones add."""
    base = median_cpu(runs["none"])
    native = median_cpu(runs[f"native-{n}"]) - base
    if native <= 0:
        return None  # the native filters' cost is lost in the noise of this run
    return round((median_cpu(runs[variant]) - base) / native, 3)


def ratios(runs: dict[str, list[Run]], variant: str, n: int) -> dict[str, Any]:
    """A wasm variant against the native filters with as many instances, same run."""
    native = runs[f"native-{n}"]
    return {
        "cpu_per_request": round(median_cpu(runs[variant]) / median_cpu(native), 3),
        "extra_cpu_per_request_over_none": extra_ratio(runs, variant, n),
        "p99": round(
            statistics.median(r.p99_ms for r in runs[variant])
            / statistics.median(r.p99_ms for r in native),
            3,
        ),
    }


def module_facts(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def stop_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI runner) unwinds like Ctrl-C, so every server started
    here is stopped on the way out."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per variant and round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--filters", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--module", type=Path, default=MODULE, help="the header-append module measured"
    )
    parser.add_argument(
        "--baseline-module",
        type=Path,
        default=None,
        help="another build of header-append, measured as the baseline-N variants",
    )
    args = parser.parse_args()
    for path in (args.module, args.baseline_module):
        if path is not None and not path.is_file():
            raise SystemExit(f"{path} is missing: run `make -C examples/extensions` first")
    variants: dict[str, list[Any]] = {"none": []}
    for n in args.filters:
        variants[f"native-{n}"] = [native_filter(i) for i in range(n)]
        variants[f"wasm-{n}"] = [wasm_filter(i, args.module) for i in range(n)]
        if args.baseline_module is not None:
            variants[f"baseline-{n}"] = [wasm_filter(i, args.baseline_module) for i in range(n)]
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    uptime_before = uptime()
    with (
        tempfile.TemporaryDirectory(prefix="meshext-wasm-vs-native-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        backend_port, backend_admin = free_port(), free_port()
        stack.enter_context(
            envoy(
                work, "backend", backend(backend_port, backend_admin), backend_port, backend_admin
            )
        )
        proxies = {}
        for name, filters in variants.items():
            port, admin_port = free_port(), free_port()
            config = sidecar(port, admin_port, backend_port, filters)
            proxies[name] = stack.enter_context(envoy(work, name, config, port, admin_port))
        # The check below can fail: without the header the backend does not answer 200.
        if status_of(proxies["none"]) != 421:
            raise SystemExit("the backend answered a request without the header with 200")
        for name, proxy in proxies.items():  # warm-up, and a check that the filters work
            warm = drive(proxy, 2, args.connections, send_header=name == "none")
            if warm.non_2xx or not warm.requests:
                raise SystemExit(f"{name}: {warm.non_2xx} of {warm.requests} requests not 200")
        for _ in range(args.rounds):
            for name, proxy in proxies.items():
                runs[name].append(drive(proxy, args.seconds, args.connections, name == "none"))
        envoy_version = subprocess.run(
            [str(ENVOY), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    result = {
        "envoy": envoy_version.rsplit(" ", 1)[-1],
        "wrk": f"-t1 -c{args.connections} -d{args.seconds}s",
        "cpus": os.cpu_count(),
        "uptime_before": uptime_before,
        "uptime_after": uptime(),
        "variants": {name: summary(r) for name, r in runs.items()},
        "modules": {
            "wasm": module_facts(args.module),
            **(
                {"baseline": module_facts(args.baseline_module)}
                if args.baseline_module is not None
                else {}
            ),
        },
        "ratios": {
            f"{kind}-{n}/native-{n}": ratios(runs, f"{kind}-{n}", n)
            for n in args.filters
            for kind in ("wasm", "baseline")
            if f"{kind}-{n}" in runs
        },
        **(
            {
                "wasm_over_baseline": {
                    str(n): round(
                        median_cpu(runs[f"wasm-{n}"]) / median_cpu(runs[f"baseline-{n}"]), 3
                    )
                    for n in args.filters
                }
            }
            if args.baseline_module is not None
            else {}
        ),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
