"""meshext against go-control-plane, side by side, with one Go load client.

For one scenario this script:

1. writes a config folder (a mesh, its member namespaces, ServiceMeshExtensions whose
   images are the example modules as ``file:`` paths) and the scenario file the Go
   programs read (which workloads exist and how many replicas each has);
2. starts ``meshext serve`` on that folder (loopback ports) and waits until every
   extension's image is resolved;
3. runs the load client against it: N simulated sidecars connect, then each round
   rewrites one extension's file in the folder and waits until every sidecar ACKed
   the new extension config. The client also records, for the first replica of each
   workload, the responses meshext sent (on connect and after the first change);
4. stops meshext, starts the go-control-plane peer on those recorded resources, and
   runs the same load client against it, a round being one ``POST /change`` that sets
   a new snapshot for every workload;
5. prints one JSON object with both runs and the load average around each.

The Go programs are built by ``build.sh`` (from the Go module proxy, cached). Every
process listens on 127.0.0.1 and is stopped at the end, also on errors and signals.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODULES = ROOT / "examples" / "extensions" / "build"
MESHEXT = ROOT / ".venv" / "bin" / "meshext"
PYTHON = ROOT / ".venv" / "bin" / "python"
CHANGED_FILE = "50-changed.yaml"


@dataclass(frozen=True)
class Extension:
    namespace: str
    name: str
    module: str
    phase: str
    priority: int
    config: str
    """The body of ``spec.config`` as YAML lines (indented by the caller)."""
    selector: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> str:
        lines = [
            "apiVersion: maistra.io/v1",
            "kind: ServiceMeshExtension",
            "metadata:",
            f"  name: {self.name}",
            f"  namespace: {self.namespace}",
            "spec:",
        ]
        if self.selector:
            lines += ["  workloadSelector:", "    labels:"]
            lines += [f"      {k}: {v}" for k, v in sorted(self.selector.items())]
        lines += ["  config:"] + [f"    {line}" for line in self.config.splitlines()]
        lines += [
            f"  image: file:{MODULES / self.module}",
            f"  phase: {self.phase}",
            f"  priority: {self.priority}",
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    labels: dict[str, str]
    replicas: int
    inbound_port: int = 15006
    app: str = "127.0.0.1:9080"

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "labels": self.labels,
            "replicas": self.replicas,
            "inbound_port": self.inbound_port,
            "app": self.app,
        }


@dataclass(frozen=True)
class Scenario:
    name: str
    namespaces: tuple[str, ...]
    workloads: tuple[Workload, ...]
    extensions: tuple[Extension, ...]
    changed: Extension
    """The mesh-wide extension whose config each round changes ({{ROUND}} in it)."""

    @property
    def proxies(self) -> int:
        return sum(w.replicas for w in self.workloads)


def changed_extension() -> Extension:
    return Extension(
        "istio-system",
        "request-counter",
        "request-counter.wasm",
        "PostStats",
        10,
        "name: meshext_bench_requests_{{ROUND}}",
    )


def one_workload(proxies: int) -> Scenario:
    """N replicas of one workload running three extensions: one mesh-wide (the one that
    changes), one for its namespace, one selecting it by label."""
    workload = Workload("bookinfo", "productpage", {"app": "productpage"}, proxies)
    extensions = (
        Extension(
            "istio-system",
            "header-append",
            "header-append.wasm",
            "PostAuthZ",
            100,
            "value: mesh",
            {"app": "productpage"},
        ),
        Extension(
            "bookinfo",
            "tag-bookinfo",
            "header-append.wasm",
            "PostAuthZ",
            200,
            "name: x-header-append\nvalue: bookinfo",
        ),
    )
    return Scenario(
        f"one-workload-{proxies}", ("bookinfo",), (workload,), extensions, changed_extension()
    )


def realistic(namespaces: int = 10, per_namespace: int = 100, replicas: int = 10) -> Scenario:
    """``namespaces`` times ``per_namespace`` workloads of ``replicas`` each. Every workload
    runs two mesh-wide extensions and its namespace's one; a third of the workloads
    (label ``tier: edge``) one more, another third (``tier: api``) two more: 3 to 5 each."""
    names = tuple(f"team-{i:02d}" for i in range(namespaces))
    workloads = []
    for ns in names:
        for j in range(per_namespace):
            labels = {"app": f"svc-{j:03d}"}
            tier = ("", "edge", "api")[j % 3]
            if tier:
                labels["tier"] = tier
            workloads.append(Workload(ns, f"svc-{j:03d}", labels, replicas))
    extensions = [
        Extension(
            "istio-system",
            "mesh-tag",
            "header-append.wasm",
            "PostAuthZ",
            100,
            "name: x-mesh\nvalue: mesh",
        )
    ]
    for ns in names:
        extensions += [
            Extension(
                ns,
                "tag-namespace",
                "header-append.wasm",
                "PostAuthZ",
                200,
                f"name: x-namespace\nvalue: {ns}",
            ),
            Extension(
                ns,
                "edge-token",
                "deny-unless-header.wasm",
                "PreAuthZ",
                50,
                "name: x-edge-token",
                {"tier": "edge"},
            ),
            Extension(
                ns,
                "api-token",
                "deny-unless-header.wasm",
                "PreAuthZ",
                60,
                "name: x-api-token",
                {"tier": "api"},
            ),
            Extension(
                ns,
                "api-tag",
                "header-append.wasm",
                "PostAuthZ",
                300,
                "name: x-api\nvalue: api",
                {"tier": "api"},
            ),
        ]
    return Scenario(
        f"realistic-{namespaces * per_namespace * replicas}",
        names,
        tuple(workloads),
        tuple(extensions),
        changed_extension(),
    )


def mesh_yaml(namespaces: tuple[str, ...]) -> str:
    members = "".join(f"    - {ns}\n" for ns in namespaces)
    return (
        "apiVersion: maistra.io/v2\n"
        "kind: ServiceMeshControlPlane\n"
        "metadata:\n  name: basic\n  namespace: istio-system\n"
        "spec:\n  version: v2.2\n  techPreview:\n    wasmExtensions:\n      enabled: true\n"
        "---\n"
        "apiVersion: maistra.io/v1\n"
        "kind: ServiceMeshMemberRoll\n"
        "metadata:\n  name: default\n  namespace: istio-system\n"
        f"spec:\n  members:\n{members}"
    )


def write_scenario(scenario: Scenario, work: Path) -> tuple[Path, Path, Path]:
    """The config folder, the change template and the scenario file."""
    config = work / "config"
    config.mkdir()
    (config / "00-mesh.yaml").write_text(mesh_yaml(scenario.namespaces))
    (config / "10-extensions.yaml").write_text(
        "---\n".join(e.manifest() for e in scenario.extensions)
    )
    template = work / "changed.yaml.tmpl"
    template.write_text(scenario.changed.manifest())
    (config / CHANGED_FILE).write_text(template.read_text().replace("{{ROUND}}", "0"))
    scenario_file = work / "scenario.json"
    scenario_file.write_text(
        json.dumps({"workloads": [w.as_json() for w in scenario.workloads]}, indent=1)
    )
    return config, template, scenario_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, 0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        for children in Path(f"/proc/{queue.pop()}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in children.read_text().split():
                    found.append(int(child))
                    queue.append(int(child))
    return found


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds so far of the server process and of its descendants (workers)."""
    return {
        "main": round(cpu_seconds(pid), 2),
        "children": round(sum(cpu_seconds(child) for child in descendants(pid)), 2),
    }


def build() -> Path:
    out = subprocess.run(
        [str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as log_file:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status, response.read()
    except OSError:
        return 0, b""


def wait_for(what: str, condition: Any, timeout: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise SystemExit(f"{what}: the server exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def all_resolved(admin: str, count: int) -> bool:
    status, body = http_get(f"{admin}/api/v1/extensions")
    if status != 200:
        return False
    items = json.loads(body).get("extensions", [])
    return len(items) == count and all(
        item.get("status", {}).get("deployment", {}).get("ready") is True for item in items
    )


def go_flags(values: dict[str, str]) -> list[str]:
    return [part for name, value in values.items() for part in (f"-{name}", value)]


def run_client(bins: Path, args: list[str], log: Path, timeout: float) -> dict[str, Any]:
    with log.open("w") as log_file:
        done = subprocess.run(
            [str(bins / "loadclient"), *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"load client failed ({done.returncode}), see {log}:\n{log.read_text()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_meshext(
    scenario: Scenario,
    work: Path,
    bins: Path,
    rounds: int,
    timeout: float,
    profile: Path | None = None,
    xds_workers: int = 0,
) -> dict[str, Any]:
    config, template, scenario_file = write_scenario(scenario, work)
    xds, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    argv = [
        str(MESHEXT),
        "serve",
        "--config",
        str(config),
        "--xds-address",
        xds,
        "--admin-address",
        admin,
        "--module-address",
        f"127.0.0.1:{free_port()}",
        "--cache-dir",
        str(work / "module-cache"),
        "--log-level",
        "warning",
    ]
    help_text = subprocess.run(
        [*argv[:2], "--help"], check=False, stdout=subprocess.PIPE, text=True
    ).stdout
    if "--insecure-xds" in help_text:
        argv.append("--insecure-xds")
    if "--local-images" in help_text:
        argv.extend(["--local-images", str(MODULES)])
    if xds_workers:
        argv += ["--xds-workers", str(xds_workers)]
    if profile is not None:
        argv = [str(PYTHON), str(HERE / "profiled.py"), str(profile.resolve()), *argv[1:]]
        # Worker processes (--xds-workers) write theirs next to it: FILE.worker<i>.<pid>.
        os.environ["MESHEXT_XDS_WORKER_PROFILE"] = str(profile.resolve())
    with started(argv, work / "meshext.log") as server:
        count = len(scenario.extensions) + 1
        wait_for(
            "meshext resolving every image",
            lambda: all_resolved(f"http://{admin}", count),
            120,
            server,
        )
        load_before = load_average()
        result = run_client(
            bins,
            go_flags(
                {
                    "target": xds,
                    "scenario": str(scenario_file),
                    "rounds": str(rounds),
                    "trigger-file": str(config / CHANGED_FILE),
                    "trigger-template": str(template),
                    "server-pid": str(server.pid),
                    "record": str(work / "recorded"),
                    "timeout": f"{timeout:.0f}s",
                }
            ),
            work / "client-meshext.log",
            timeout + 60,
        )
        result["server_cpu_total_by_process_s"] = cpu_split(server.pid)
    result["load_average_before"] = load_before
    result["load_average_after"] = load_average()
    return result


def run_peer(
    scenario: Scenario, work: Path, bins: Path, rounds: int, timeout: float
) -> dict[str, Any]:
    scenario_file = work / "scenario.json"
    flags = {
        "scenario": str(scenario_file),
        "recorded": str(work / "recorded"),
        "address": f"127.0.0.1:{free_port()}",
        "control": f"127.0.0.1:{free_port()}",
    }
    argv = [str(bins / "peer"), *go_flags(flags)]
    with started(argv, work / "peer.log") as server:
        assert server.stdout is not None
        addresses = dict(server.stdout.readline().split() for _ in range(2))
        if set(addresses) != {"xds", "control"}:
            raise SystemExit(f"the peer did not start, see {work / 'peer.log'}")
        load_before = load_average()
        result = run_client(
            bins,
            go_flags(
                {
                    "target": addresses["xds"],
                    "scenario": str(scenario_file),
                    "rounds": str(rounds),
                    "trigger-url": f"http://{addresses['control']}/change",
                    "server-pid": str(server.pid),
                    "timeout": f"{timeout:.0f}s",
                }
            ),
            work / "client-peer.log",
            timeout + 60,
        )
    result["load_average_before"] = load_before
    result["load_average_after"] = load_average()
    return result


def scenario_named(name: str, proxies: int) -> Scenario:
    if name == "one-workload":
        return one_workload(proxies)
    if name == "realistic":
        return realistic(replicas=max(1, proxies // 1000))
    raise SystemExit(f"unknown scenario {name!r}")


def stop_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI runner) unwinds like Ctrl-C, so every server started
    here is stopped on the way out."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def head_commit() -> str:
    """The short hash of the checkout's HEAD, to tell results apart ("" outside git)."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h"],
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["one-workload", "realistic"], default="one-workload")
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600, help="per server, in seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run meshext under cProfile and write its profile here (the profiler slows it "
        "down, so its numbers are not comparable; the peer is not run)",
    )
    parser.add_argument(
        "--xds-workers", type=int, default=0, help="meshext serve --xds-workers (default 0)"
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="run meshext only, not the go-control-plane peer"
    )
    args = parser.parse_args()
    if not MESHEXT.exists():
        raise SystemExit(f"{MESHEXT} is missing: run `make setup` first")
    if not (MODULES / "request-counter.wasm").exists():
        raise SystemExit(f"{MODULES} is missing: run `make -C examples/extensions` first")
    scenario = scenario_named(args.scenario, args.proxies)
    bins = build()
    work = Path(tempfile.mkdtemp(prefix="meshext-xds-vs-gcp-"))
    try:
        meshext = run_meshext(
            scenario, work, bins, args.rounds, args.timeout, args.profile, args.xds_workers
        )
        peer = (
            None
            if args.profile is not None or args.no_peer
            else run_peer(scenario, work, bins, args.rounds, args.timeout)
        )
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    commit = head_commit()
    text = json.dumps(
        {
            "scenario": scenario.name,
            "proxies": scenario.proxies,
            "workloads": len(scenario.workloads),
            "extensions": len(scenario.extensions) + 1,
            "commit": commit,
            "cpus": os.cpu_count(),
            "xds_workers": args.xds_workers,
            "meshext": meshext,
            "go_control_plane": peer,
        },
        indent=2,
    )
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
