"""``meshext kube controller``: the controller process, wired from its parts.

One process serves, on every replica: the admin port (health, readiness, modules),
the conversion webhook (when given a certificate), and the controller (which writes
only while it holds the lease). Given the webhook's CA too, the leader keeps that CA
in the ServiceMeshExtension CRD (:mod:`meshext.kube.cainjector`). It stops cleanly
on cancellation: the queue stops, then the lease is released, then the servers close.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from meshext.images.cache import ModuleCache
from meshext.images.config import RegistryConfig
from meshext.images.local import LocalImages
from meshext.images.resolver import ImageResolver
from meshext.images.trust import SIGNATURES_OFF, SignaturePolicy
from meshext.kube.cainjector import CaBundleInjector
from meshext.kube.client import KubeClient
from meshext.kube.controller import Controller, ControllerSettings
from meshext.kube.http import admin_app, start_webhook_server
from meshext.kube.secrets import KubePullSecretStore
from meshext.kube.signature_trust import ClusterTrust
from meshext.kube.tasks import cancel_and_wait
from meshext.server.modules import start_module_server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    settings: ControllerSettings
    cache_dir: Path
    kubeconfig: str | None = None
    context: str | None = None
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    signatures: SignaturePolicy = SIGNATURES_OFF
    admin_host: str = "127.0.0.1"
    admin_port: int = 8080
    webhook_cert: Path | None = None
    webhook_key: Path | None = None
    webhook_ca: Path | None = None
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 8443
    local_images: tuple[Path, ...] = ()
    """Folders of this host ``file:`` and ``oci-layout:`` images may come from. None by
    default: a namespace's user must not read the controller's files."""


async def run_controller(options: RunOptions, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or the task is cancelled)."""
    client = await KubeClient.connect(options.kubeconfig, context=options.context)
    cache = ModuleCache(options.cache_dir)
    # The operator's policy, combined per mesh and namespace with the keys published
    # in the cluster (see meshext.kube.signature_trust).
    trust = ClusterTrust(client, options.signatures, watch_timeout=options.settings.watch_timeout)
    resolver = ImageResolver(
        cache,
        KubePullSecretStore(client),
        registry_config=options.registry,
        signatures=trust.verifier,
        local_images=LocalImages(options.local_images),
    )
    controller = Controller(client, resolver, options.settings, trust=trust)
    admin = await start_module_server(
        admin_app(controller, cache), options.admin_host, options.admin_port
    )
    log.info("admin and module server on %s", admin.base_url)
    webhook = None
    try:
        if options.webhook_cert is not None and options.webhook_key is not None:
            webhook = await start_webhook_server(
                options.webhook_cert,
                options.webhook_key,
                options.webhook_host,
                options.webhook_port,
            )
            log.info("conversion webhook on %s", webhook.url)
        else:
            log.warning(
                "no --webhook-cert: this replica serves no conversion webhook, so reading or "
                "writing maistra.io/v1alpha1 ServiceMeshExtensions fails unless another "
                "process serves it"
            )
        running = asyncio.create_task(controller.run(), name="controller")
        waiting = asyncio.create_task((stop or asyncio.Event()).wait(), name="stop")
        tasks = {running, waiting}
        if options.webhook_ca is not None:
            injector = CaBundleInjector(
                client, options.webhook_ca, should_write=lambda: controller.is_leader
            )
            tasks.add(asyncio.create_task(injector.run(), name="CA bundle"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if running in done:
                running.result()
        finally:
            await cancel_and_wait(*tasks)
    finally:
        if webhook is not None:
            await webhook.stop()
        await admin.stop()
        await resolver.aclose()
        await client.close()
