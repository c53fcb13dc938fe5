"""``meshext serve``: the components of the control plane, started and stopped together.

One asyncio loop runs everything: the config source, image resolution, the control
loop, the ADS server (gRPC), the module server and the admin API (HTTP). With
``xds_workers`` (``--xds-workers N``) the ADS streams are served by N worker processes
instead (:mod:`meshext.server.workers`) and this process keeps the rest. Addresses
default to loopback; the ADS and module addresses are what proxies must reach.

By default xDS is mutual TLS and the module server HTTPS, both with a certificate
from the mesh CA (:mod:`meshext.identity`); ``insecure_xds`` serves both in plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from meshext.envoy.node import DeliveryMode, HostPort
from meshext.envoy.wasm import ModuleDelivery, ModuleServerTls
from meshext.identity.authority import CaSettings, refresh_ssl_context, server_ssl_context
from meshext.identity.ca import CertificateAuthority
from meshext.identity.exchange import DEFAULT_AUDIENCE, TokenAuthenticator, exchange_app
from meshext.identity.issuance import keep_folders_renewed
from meshext.identity.peer import MeshStreamSecurity, ServerCertificate
from meshext.identity.state import credentials_root
from meshext.images.cache import ModuleCache
from meshext.images.config import RegistryConfig
from meshext.images.local import LocalImages
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import FolderPullSecretStore
from meshext.images.trust import SIGNATURES_OFF, SignaturePolicy
from meshext.images.verification import SignatureVerifier
from meshext.mesh.resolution import ModuleResolver, PullSecretStore
from meshext.preflight.runner import PreflightRunner
from meshext.preflight.store import PreflightStore
from meshext.server.admin import admin_app
from meshext.server.control import ControlPlane
from meshext.server.modules import RunningServer, module_app, start_module_server
from meshext.server.status_metrics import DeliveryMetrics
from meshext.server.workers.pool import ShippingSnapshotCache, WorkerPool
from meshext.sources.base import ConfigSource, StatusSink
from meshext.sources.watch import FolderSource
from meshext.xds.cache import SnapshotCache
from meshext.xds.server import AdsServer

if TYPE_CHECKING:
    from meshext.kube.signature_trust import ClusterTrust
    from meshext.mesh.topology import Topology

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
    insecure_xds: bool = False
    """Serve xDS and modules in plaintext, to anyone who reaches them."""
    ca: CaSettings = field(default_factory=CaSettings)
    certificate_address: str = "127.0.0.1:15012"
    """Where proxies exchange a token for a certificate (with a token authenticator)."""
    token_audience: str = DEFAULT_AUDIENCE
    signatures: SignaturePolicy = SIGNATURES_OFF
    local_images: tuple[Path, ...] = ()
    """Folders ``file:`` and ``oci-layout:`` images may come from; none by default."""
    xds_workers: int = 0
    """Processes serving the ADS streams; 0 serves them in this process."""


@dataclass
class RunningControlPlane:
    """Handles on a started control plane, for callers that embed it (tests, quickstart)."""

    control: ControlPlane
    ads: AdsServer | WorkerPool
    xds_port: int
    modules: RunningServer
    admin: RunningServer
    ca: CertificateAuthority | None = None
    """The mesh CA, ``None`` when serving in plaintext."""
    certificates: RunningServer | None = None
    """The token-for-certificate exchange, when a token authenticator was given."""
    server_identity: str | None = None
    """The SPIFFE id of the control plane's certificate, ``None`` in plaintext."""

    @property
    def xds_address(self) -> HostPort:
        return HostPort("127.0.0.1", self.xds_port)

    @property
    def admin_url(self) -> str:
        return self.admin.base_url


@dataclass(frozen=True)
class _ServerTls:
    """The control plane's side of TLS: its certificate and what is built on it."""

    server: ServerCertificate
    ssl_context: ssl.SSLContext
    security: MeshStreamSecurity
    module_tls: ModuleServerTls

    @classmethod
    def create(cls, options: ServeOptions) -> _ServerTls:
        hosts = (
            listen_address(options.xds_address).host,
            listen_address(options.module_address).host,
            listen_address(options.certificate_address).host,
        )
        server = ServerCertificate(options.ca.load(), hosts=hosts)
        return cls(
            server,
            server_ssl_context(server),
            MeshStreamSecurity(server),
            ModuleServerTls(server.ca.bundle_pem.decode(), server.identity.uri),
        )


@contextlib.asynccontextmanager
async def running_control_plane(
    options: ServeOptions,
    *,
    source: ConfigSource | None = None,
    secrets: PullSecretStore | None = None,
    sinks: tuple[StatusSink, ...] = (),
    authenticator: TokenAuthenticator | None = None,
    trust: ClusterTrust | None = None,
) -> AsyncIterator[RunningControlPlane]:
    """Start every component; on exit stop them all, even after an error. With an
    ``authenticator`` (and TLS), proxies can also exchange tokens for certificates.
    With ``trust`` (serving from a cluster), each extension's image is judged by the
    policy and keys of its mesh and namespace, as the controller judges it."""
    if source is None:
        if options.config is None:
            raise ValueError("either a config folder or a config source is needed")
        source = FolderSource(options.config)
    if secrets is None:
        secrets = FolderPullSecretStore(options.config) if options.config else _NoSecrets()
    cache = ModuleCache(options.cache_dir, max_bytes=options.cache_max_bytes)
    # The meshes as the control loop last applied them (it exists by the time
    # anything is resolved).
    resolver = _module_resolver(options, cache, secrets, trust, lambda: control.model.topology)
    module_host = listen_address(options.module_address)
    registry = CollectorRegistry(auto_describe=True)
    snapshots = ShippingSnapshotCache() if options.xds_workers > 0 else SnapshotCache()
    tls = None if options.insecure_xds else _ServerTls.create(options)
    served: list[ControlPlane] = []  # the control loop, once made, hears of served modules

    def on_served(sha256: str) -> None:
        for control_loop in served:
            control_loop.module_served(sha256)

    modules = await start_module_server(
        module_app(cache, on_served=on_served),
        module_host.host,
        module_host.port,
        ssl_context=tls.ssl_context if tls else None,
    )
    delivery = ModuleDelivery(
        mode=options.module_delivery,
        server=HostPort(module_host.host, modules.port),
        tls=tls.module_tls if tls else None,
    )
    preflight = PreflightRunner(store=PreflightStore(options.cache_dir / "preflight"))
    control = ControlPlane(resolver, snapshots, delivery, sinks=sinks, preflight=preflight)
    served.append(control)
    registry.register(DeliveryMetrics(control.extension_counts))
    ads = _ads_server(options, snapshots, control, registry, tls)
    admin: RunningServer | None = None
    certificates: RunningServer | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        if authenticator is not None and tls is not None:
            where = listen_address(options.certificate_address)
            certificates = await start_module_server(
                exchange_app(tls.server.ca, authenticator),
                where.host,
                where.port,
                ssl_context=tls.ssl_context,
            )
            log.info("certificate exchange on %s", certificates.base_url)
        xds_port = await ads.start(options.xds_address)
        admin_host = listen_address(options.admin_address)
        app = admin_app(control, ads, registry, lambda: control.ready)
        admin = await start_module_server(app, admin_host.host, admin_host.port)
        tasks.append(asyncio.create_task(control.run(source), name="control loop"))
        if tls is not None:
            tasks.append(asyncio.create_task(_renew_https(tls.ssl_context, tls.server)))
        yield RunningControlPlane(
            control,
            ads,
            xds_port,
            modules,
            admin,
            ca=tls.server.ca if tls else None,
            certificates=certificates,
            server_identity=tls.server.identity.uri if tls else None,
        )
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await ads.stop(grace=1.0)
        if admin is not None:
            await admin.stop()
        if certificates is not None:
            await certificates.stop()
        await modules.stop()


def _ads_server(
    options: ServeOptions,
    snapshots: SnapshotCache,
    control: ControlPlane,
    registry: CollectorRegistry,
    tls: _ServerTls | None,
) -> AdsServer | WorkerPool:
    """The ADS server in this process or, with ``--xds-workers``, the worker pool."""
    security = tls.security if tls else None
    if isinstance(snapshots, ShippingSnapshotCache):
        return WorkerPool(
            options.xds_workers,
            snapshots,
            control,
            registry=registry,
            security=security,
            ca=options.ca,
            hosts=tls.server.hosts if tls else (),
        )
    return AdsServer(snapshots, control, registry=registry, security=security)


def _module_resolver(
    options: ServeOptions,
    cache: ModuleCache,
    secrets: PullSecretStore,
    trust: ClusterTrust | None,
    topology: Callable[[], Topology],
) -> ModuleResolver:
    """The image resolver; with ``trust``, judging each image by its mesh and namespace."""
    images = ImageResolver(
        cache,
        secrets,
        registry_config=options.registry,
        signatures=trust.verifier if trust else SignatureVerifier(options.signatures),
        local_images=LocalImages(tuple(p.resolve() for p in options.local_images)),
    )
    if trust is None:
        return images
    from meshext.kube.scoped_resolution import MeshScopedResolver  # noqa: PLC0415

    return MeshScopedResolver(images, trust, topology)


@contextlib.asynccontextmanager
async def running_from_cluster(
    options: ServeOptions, kubeconfig: Path, *, watch_timeout: int = 300
) -> AsyncIterator[RunningControlPlane]:
    """:func:`running_control_plane` with the cluster ``kubeconfig`` names as source:
    ServiceMeshExtension status is written to the cluster, proxies exchange
    service-account tokens for certificates, and images are judged per mesh and
    namespace with the keys published in the cluster (as ``meshext kube controller``
    does, see :mod:`meshext.kube.scoped_resolution`)."""
    # Imported only when serving from a cluster: the Kubernetes client costs a
    # folder-serving process about 36 MiB (measured by benchmarks/ads_scale).
    from meshext.kube.client import KubeClient  # noqa: PLC0415
    from meshext.kube.secrets import KubePullSecretStore  # noqa: PLC0415
    from meshext.kube.signature_trust import ClusterTrust  # noqa: PLC0415
    from meshext.kube.source import KubernetesSource  # noqa: PLC0415
    from meshext.kube.status import KubernetesStatusSink  # noqa: PLC0415
    from meshext.kube.token_review import KubeTokenAuthenticator  # noqa: PLC0415

    async with await KubeClient.connect(kubeconfig) as client:
        trust = ClusterTrust(client, options.signatures, watch_timeout=watch_timeout)
        # The trusted keys are watched with the source: the first configuration waits
        # for them, and each change of them is a new configuration to look at.
        source = KubernetesSource(
            client, watch_timeout=watch_timeout, watch_also=(trust.config_maps,)
        )
        async with running_control_plane(
            options,
            source=source,
            secrets=KubePullSecretStore(client),
            sinks=(KubernetesStatusSink(client),),
            authenticator=KubeTokenAuthenticator(client, options.token_audience),
            trust=trust,
        ) as running:
            yield running


async def serve_forever(options: ServeOptions, kubeconfig: Path | None = None) -> None:
    """Serve until cancelled, from the config folder or, with ``kubeconfig``, from the
    cluster it names (see :func:`running_from_cluster`)."""
    async with contextlib.AsyncExitStack() as stack:
        running = await stack.enter_async_context(
            running_control_plane(options)
            if kubeconfig is None
            else running_from_cluster(options, kubeconfig)
        )
        if running.ca is not None:
            # Proxies bootstrapped on this host keep valid certificates without a timer.
            renewal = asyncio.create_task(
                keep_folders_renewed(running.ca, credentials_root()), name="renewal"
            )
            stack.callback(renewal.cancel)
        tune_garbage_collector()
        xds_host = listen_address(options.xds_address).host
        log.info(
            "meshext serving: xDS on %s (%s), modules on %s, admin on %s",
            HostPort(xds_host, running.xds_port),
            "PLAINTEXT" if options.insecure_xds else "mutual TLS",
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


async def _renew_https(context: ssl.SSLContext, server: ServerCertificate) -> None:
    """Keep the module server's certificate current (checked every ten minutes)."""
    while True:
        await asyncio.sleep(600)
        refresh_ssl_context(context, server)


class _NoSecrets:
    async def get(self, namespace: str, name: str) -> bytes | None:
        return None
