"""Builders for the Envoy tests: proxies, plans and modules with little ceremony."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from meshext.api.meta import ResourceKey
from meshext.api.phase import Phase
from meshext.envoy.node import DeliveryMode, HostPort, ProxyInfo
from meshext.mesh.extension import Extension, FailurePolicy
from meshext.mesh.planner import PlannedExtension, WorkloadPlan
from meshext.mesh.resolution import ImageFormat, ResolvedModule
from meshext.mesh.workload import ProxyKind, Workload

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "extensions"
BUILD = EXAMPLES / "build"
SME = "ServiceMeshExtension"
APP = HostPort("127.0.0.1", 8080)


def build_examples() -> Path:
    """Builds the example modules (a no-op when they are up to date); returns the build dir."""
    subprocess.run(["make", "-s", "-C", str(EXAMPLES), "all"], check=True)
    return BUILD


def module_from_bytes(path: Path) -> ResolvedModule:
    data = path.read_bytes()
    return ResolvedModule(
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path),
        size=len(data),
        image_digest=None,
        image_format=ImageFormat.LOCAL_FILE,
    )


def example_module(name: str) -> ResolvedModule:
    return module_from_bytes(BUILD / f"{name}.wasm")


def fake_module(tag: str) -> ResolvedModule:
    """A module that exists only as a name and hash (for the pure generator's tests)."""
    sha = hashlib.sha256(tag.encode()).hexdigest()
    return ResolvedModule(
        sha256=sha,
        path=f"/var/cache/meshext/modules/{sha}.wasm",
        size=1234,
        image_digest=None,
        image_format=ImageFormat.LOCAL_FILE,
    )


def planned(
    name: str,
    *,
    namespace: str = "apps",
    phase: Phase = Phase.POST_AUTHZ,
    priority: int = 0,
    config: str = "",
    module: ResolvedModule | None = None,
    kind: str = SME,
    failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED,
    root_id: str | None = None,
    env: Mapping[str, str] | None = None,
) -> PlannedExtension:
    extension = Extension(
        key=ResourceKey(kind, namespace, name),
        generation=1,
        image=f"registry.example/{name}:1",
        selector={},
        config=config,
        phase=phase,
        priority=priority,
        failure_policy=failure_policy,
        root_id=root_id,
        env=dict(env or {}),
    )
    return PlannedExtension(extension, phase, priority, module or fake_module(name))


def workload(
    namespace: str = "apps",
    *,
    name: str = "httpbin",
    labels: Mapping[str, str] | None = None,
    kind: ProxyKind = ProxyKind.SIDECAR,
) -> Workload:
    return Workload(namespace=namespace, labels=dict(labels or {"app": name}), kind=kind, name=name)


def plan(extensions: Sequence[PlannedExtension], wl: Workload | None = None) -> WorkloadPlan:
    ordered = tuple(sorted(extensions, key=PlannedExtension.sort_key))
    return WorkloadPlan(wl or workload(), ordered, ())


def proxy(
    wl: Workload | None = None,
    *,
    port: int = 15006,
    app: HostPort = APP,
    address: str = "127.0.0.1",
    delivery: DeliveryMode | None = None,
    node_id: str = "sidecar~httpbin.apps~15006",
) -> ProxyInfo:
    return ProxyInfo(
        node_id=node_id,
        workload=wl or workload(),
        inbound_port=port,
        app=app,
        inbound_address=address,
        module_delivery=delivery,
    )
