"""``meshext serve``: the components of the control plane, started and stopped together.

One asyncio loop runs everything: the config source, image resolution, the control
loop, the ADS server (gRPC), the module server and the admin API (HTTP). Addresses
default to loopback; the ADS and module addresses are what proxies must reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from meshext.envoy.node import DeliveryMode, HostPort
from meshext.envoy.wasm import ModuleDelivery
from meshext.images.cache import ModuleCache
from meshext.images.config import RegistryConfig
from meshext.images.local import LocalImages
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import FolderPullSecretStore
from meshext.mesh.resolution import PullSecretStore
from meshext.server.admin import admin_app
from meshext.server.control import ControlPlane
from meshext.server.modules import RunningServer, module_app, start_module_server
from meshext.sources.base import ConfigSource, StatusSink
from meshext.sources.watch import FolderSource
from meshext.xds.cache import SnapshotCache
from meshext.xds.server import AdsServer

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    root = os.environ.get("MESHEXT_CACHE") or str(Path.home() / ".cache" / "meshext")
    return Path(root) / "modules"


def listen_address(text: str) -> HostPort:
    """``host:port`` to listen on; port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not a host:port address to listen on")
    return HostPort(host.strip("[]"), int(port))


@dataclass(frozen=True)
class ServeOptions:
    config: Path | None = None
    xds_address: str = "127.0.0.1:15010"
    admin_address: str = "127.0.0.1:15014"
    module_address: str = "127.0.0.1:15080"
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_max_bytes: int | None = None
    module_delivery: DeliveryMode = DeliveryMode.LOCAL
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    local_images: tuple[Path, ...] = ()
    """Folders ``file:`` and ``oci-layout:`` images may come from; none by default."""


@dataclass
class RunningControlPlane:
    """Handles on a started control plane, for callers that embed it (tests, quickstart)."""

    control: ControlPlane
    ads: AdsServer
    xds_port: int
    modules: RunningServer
    admin: RunningServer

    @property
    def xds_address(self) -> HostPort:
        return HostPort("127.0.0.1", self.xds_port)

    @property
    def admin_url(self) -> str:
        return self.admin.base_url


@contextlib.asynccontextmanager
async def running_control_plane(
    options: ServeOptions,
    *,
    source: ConfigSource | None = None,
    secrets: PullSecretStore | None = None,
    sinks: tuple[StatusSink, ...] = (),
) -> AsyncIterator[RunningControlPlane]:
    """Start every component; on exit stop them all, even after an error."""
    if source is None:
        if options.config is None:
            raise ValueError("either a config folder or a config source is needed")
        source = FolderSource(options.config)
    if secrets is None:
        secrets = FolderPullSecretStore(options.config) if options.config else _NoSecrets()
    cache = ModuleCache(options.cache_dir, max_bytes=options.cache_max_bytes)
    resolver = ImageResolver(
        cache,
        secrets,
        registry_config=options.registry,
        local_images=LocalImages(tuple(p.resolve() for p in options.local_images)),
    )
    module_host = listen_address(options.module_address)
    registry = CollectorRegistry(auto_describe=True)
    snapshots = SnapshotCache()
    modules = await start_module_server(module_app(cache), module_host.host, module_host.port)
    delivery = ModuleDelivery(
        mode=options.module_delivery, server=HostPort(module_host.host, modules.port)
    )
    control = ControlPlane(resolver, snapshots, delivery, sinks=sinks)
    ads = AdsServer(snapshots, control, registry=registry)
    admin: RunningServer | None = None
    loop_task: asyncio.Task[None] | None = None
    try:
        xds_port = await ads.start(options.xds_address)
        admin_host = listen_address(options.admin_address)
        app = admin_app(control, ads, registry, lambda: control.ready)
        admin = await start_module_server(app, admin_host.host, admin_host.port)
        loop_task = asyncio.create_task(control.run(source), name="control loop")
        yield RunningControlPlane(control, ads, xds_port, modules, admin)
    finally:
        if loop_task is not None:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        await ads.stop(grace=1.0)
        if admin is not None:
            await admin.stop()
        await modules.stop()


async def serve_forever(options: ServeOptions, kubeconfig: Path | None = None) -> None:
    """Serve until cancelled, from the config folder or, with ``kubeconfig``, from the
    cluster it names (ServiceMeshExtension status is then written to the cluster)."""
    async with contextlib.AsyncExitStack() as stack:
        source: ConfigSource | None = None
        secrets: PullSecretStore | None = None
        sinks: tuple[StatusSink, ...] = ()
        if kubeconfig is not None:
            # Imported only when serving from a cluster: the Kubernetes client costs a
            # folder-serving process about 36 MiB (measured by benchmarks/ads_scale).
            from meshext.kube.client import KubeClient  # noqa: PLC0415
            from meshext.kube.secrets import KubePullSecretStore  # noqa: PLC0415
            from meshext.kube.source import KubernetesSource  # noqa: PLC0415
            from meshext.kube.status import KubernetesStatusSink  # noqa: PLC0415

            client = await stack.enter_async_context(await KubeClient.connect(kubeconfig))
            source = KubernetesSource(client)
            secrets = KubePullSecretStore(client)
            sinks = (KubernetesStatusSink(client),)
        running = await stack.enter_async_context(
            running_control_plane(options, source=source, secrets=secrets, sinks=sinks)
        )
        tune_garbage_collector()
        log.info(
            "meshext serving: xDS on 127.0.0.1:%d, modules on %s, admin on %s",
            running.xds_port,
            running.modules.base_url,
            running.admin_url,
        )
        await asyncio.Event().wait()


def tune_garbage_collector() -> None:
    """Settings for a long-running control plane: objects alive after start-up are never
    scanned again, and young collections run 100 times less often. With many proxies
    most objects live long; benchmarks/ads_scale measured p99 0.85 s instead of 1.26 s
    at 2,000 proxies. Process-wide, so only the ``serve`` command applies it."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(100_000, middle, old)


class _NoSecrets:
    async def get(self, namespace: str, name: str) -> bytes | None:
        return None
