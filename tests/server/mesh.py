"""A running meshext (in this process) with real Envoy sidecars, for end-to-end tests.

The control plane serves a temporary config folder; tests write manifests into it
and meshext picks them up as it would in production. Each sidecar is a real Envoy
started from the bootstrap ``meshext bootstrap`` prints, in front of an echo app.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from meshext.envoy.bootstrap import AdsServer, sidecar_bootstrap
from meshext.envoy.node import DeliveryMode
from meshext.identity.authority import CaSettings
from meshext.identity.credentials import WrittenCredentials
from meshext.identity.issuance import proxy_credentials
from meshext.mesh.workload import ProxyKind
from meshext.quickstart.echo import start_echo_app
from meshext.quickstart.envoy_process import EnvoyProcess
from meshext.server.app import RunningControlPlane, ServeOptions, running_control_plane
from meshext.server.control import ExtensionReport
from meshext.server.delivery import DeliveryState
from meshext.server.modules import RunningServer
from tests.envoy.harness import eventually
from tests.envoy.support import build_examples
from tests.network import free_port
from tests.sdk_examples import BUILD as SDK_BUILD

T = TypeVar("T")

CONTROL_PLANE = """\
apiVersion: maistra.io/v2
kind: ServiceMeshControlPlane
metadata: {{name: basic, namespace: istio-system}}
spec: {{techPreview: {{wasmExtensions: {{enabled: {enabled}}}}}}}
---
apiVersion: maistra.io/v1
kind: ServiceMeshMemberRoll
metadata: {{name: default, namespace: istio-system}}
spec: {{members: [{members}]}}
"""


def sme(
    namespace: str,
    name: str,
    module: str,
    *,
    config: Mapping[str, Any] | str | None = None,
    phase: str = "PostAuthZ",
    priority: int = 0,
    selector: Mapping[str, str] | None = None,
    api_version: str = "maistra.io/v1",
) -> str:
    """A ServiceMeshExtension manifest for an example module (``header-append``, ...)."""
    spec: dict[str, Any] = {
        "image": f"file:{build_examples() / (module + '.wasm')}",
        "phase": phase,
        "priority": priority,
    }
    if config is not None:
        spec["config"] = config
    if selector:
        spec["workloadSelector"] = {"labels": dict(selector)}
    document = {
        "apiVersion": api_version,
        "kind": "ServiceMeshExtension",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return json.dumps(document)


@dataclass
class Sidecar:
    envoy: EnvoyProcess
    app: RunningServer
    port: int
    node_id: str
    credentials: WrittenCredentials | None = None
    """The sidecar's key and certificate (``None`` against a plaintext server)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(
        self, path: str = "/", headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(self.url + path, headers=dict(headers or {}))

    async def appended(self, headers: Mapping[str, str] | None = None) -> list[str]:
        """The ``x-header-append`` values the app received, in order ([] if refused)."""
        response = await self.get("/", headers)
        if response.status_code != 200:
            return [f"status {response.status_code}"]
        return [v for k, v in response.json()["headers"] if k.lower() == "x-header-append"]


@dataclass
class Mesh:
    running: RunningControlPlane
    config: Path
    workdir: Path
    sidecars: list[Sidecar] = field(default_factory=list)

    def write(self, file: str, *documents: str) -> None:
        """Write (atomically) one manifest file of the served folder."""
        target = self.config / file
        temporary = target.with_suffix(".tmp")
        temporary.write_text("\n---\n".join(documents) + "\n")
        temporary.rename(target)

    def remove(self, file: str) -> None:
        (self.config / file).unlink()

    def control_plane(self, *, enabled: bool = True, members: str = "bookinfo, payments") -> None:
        self.write(
            "00-mesh.yaml", CONTROL_PLANE.format(enabled=str(enabled).lower(), members=members)
        )

    async def sidecar(
        self,
        name: str,
        namespace: str,
        labels: Mapping[str, str],
        *,
        delta: bool = False,
        delivery: DeliveryMode | None = None,
        kind: ProxyKind = ProxyKind.SIDECAR,
        outbound: tuple[str, ...] = (),
        service_account: str = "default",
    ) -> Sidecar:
        app = await start_echo_app()
        port = free_port()
        credentials, tls = None, None
        if self.running.ca is not None:
            folder = self.workdir / "credentials" / f"{name}.{namespace}.{port}"
            credentials, tls = proxy_credentials(
                self.running.ca, namespace, service_account, folder
            )
        bootstrap = sidecar_bootstrap(
            name=name,
            namespace=namespace,
            labels=labels,
            listen=f"127.0.0.1:{port}",
            app=f"127.0.0.1:{app.port}",
            xds=AdsServer(self.running.xds_address, delta=delta, tls=tls),
            admin_port=free_port(),
            kind=kind,
            module_delivery=delivery,
            outbound=outbound,
        )
        envoy = EnvoyProcess(bootstrap, self.workdir, name=f"{name}.{namespace}.{port}")
        sidecar = Sidecar(envoy, app, port, bootstrap["node"]["id"], credentials)
        self.sidecars.append(sidecar)
        await envoy.start()
        return sidecar

    def report(self, name: str) -> ExtensionReport:
        for report in self.running.control.reports():
            if report.key.name == name:
                return report
        raise AssertionError(f"no extension named {name!r}")

    async def until(
        self, probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str
    ) -> T:
        return await eventually(probe, done, what, deadline=120)

    async def until_running(self, name: str, proxies: int = 1) -> ExtensionReport:
        async def probe() -> ExtensionReport | None:
            # None until the folder edit that adds the extension has been loaded.
            return next((r for r in self.running.control.reports() if r.key.name == name), None)

        def done(report: ExtensionReport | None) -> bool:
            if report is None:
                return False
            running = [p for p in report.proxies if p.state is DeliveryState.RUNNING]
            return len(running) == proxies

        report = await self.until(probe, done, f"{name} running on {proxies} proxies")
        assert report is not None
        return report


def serve_options(workdir: Path, *, xds_port: int = 0, module_port: int = 0) -> ServeOptions:
    config = workdir / "config"
    config.mkdir(parents=True, exist_ok=True)
    return ServeOptions(
        config=config,
        xds_address=f"127.0.0.1:{xds_port}",
        admin_address="127.0.0.1:0",
        module_address=f"127.0.0.1:{module_port}",
        cache_dir=workdir / "cache",
        ca=CaSettings(directory=workdir / "ca"),
        local_images=(build_examples(), SDK_BUILD, workdir),
    )


@contextlib.asynccontextmanager
async def running_mesh(workdir: Path, options: ServeOptions | None = None) -> AsyncIterator[Mesh]:
    options = options or serve_options(workdir)
    config = options.config
    assert config is not None
    async with running_control_plane(options) as running, mesh_of(running, config, workdir) as mesh:
        yield mesh


@contextlib.asynccontextmanager
async def mesh_of(running: RunningControlPlane, config: Path, workdir: Path) -> AsyncIterator[Mesh]:
    """Sidecars for a control plane started elsewhere, stopped when the block ends."""
    mesh = Mesh(running, config, workdir)
    try:
        yield mesh
    finally:
        for sidecar in mesh.sidecars:
            await sidecar.envoy.stop()
            await sidecar.app.stop()
