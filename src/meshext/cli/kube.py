"""``meshext kube``: the controller, the conversion webhook, CRDs, certificates, migration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

import click
import yaml

from meshext.cli.migrate import migrate
from meshext.cli.options import (
    local_image_folders,
    local_images_option,
    registry_options,
    registry_transport_options,
)
from meshext.cli.trust_options import signature_options
from meshext.cli.trust_options import signature_policy as signature_policy_of
from meshext.errors import MeshextError
from meshext.istio.render import DEFAULT_ROOT_NAMESPACE, IstioOptions
from meshext.kube.certs import self_signed, service_hosts
from meshext.kube.controller import LEASE_NAME, ControllerSettings
from meshext.kube.crds import (
    DEFAULT_SERVICE_NAME,
    DEFAULT_SERVICE_NAMESPACE,
    DEFAULT_SERVICE_PORT,
    ConversionWebhook,
    custom_resource_definitions,
)
from meshext.kube.http import start_webhook_server
from meshext.kube.run import RunOptions, run_controller
from meshext.server.app import default_cache_dir

CRDS_HEADER = "# Generated from meshext's models by `meshext kube crds`: do not edit."


@click.group("kube")
def kube() -> None:
    """Run meshext on Kubernetes."""


def _split_service(value: str) -> tuple[str, str]:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name:
        raise click.BadParameter(f"expected NAMESPACE/NAME, got {value!r}")
    return namespace, name


def _split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def _until_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


# --------------------------------------------------------------------------- crds


@kube.command("crds")
@click.option("--webhook-url", help="Conversion webhook URL (instead of a Service).")
@click.option(
    "--service",
    default=f"{DEFAULT_SERVICE_NAMESPACE}/{DEFAULT_SERVICE_NAME}",
    show_default=True,
    metavar="NAMESPACE/NAME",
    help="Service of the conversion webhook.",
)
@click.option(
    "--service-port",
    type=int,
    default=DEFAULT_SERVICE_PORT,
    show_default=True,
    help="Port of the webhook's Service the API server calls.",
)
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM of the CA that signed the webhook's certificate (becomes caBundle).",
)
def crds(webhook_url: str | None, service: str, service_port: int, ca_bundle: Path | None) -> None:
    """Print the CustomResourceDefinitions (ServiceMeshExtension, -ControlPlane,
    -MemberRoll) as YAML."""
    namespace, name = _split_service(service)
    webhook = ConversionWebhook(
        url=webhook_url,
        service_namespace=namespace,
        service_name=name,
        service_port=service_port,
        ca_bundle=ca_bundle.read_bytes() if ca_bundle else None,
    )
    click.echo(CRDS_HEADER)
    click.echo(yaml.safe_dump_all(custom_resource_definitions(webhook), sort_keys=False), nl=False)


# --------------------------------------------------------------------------- certs


@kube.command("certs")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for ca.crt, tls.crt and tls.key.",
)
@click.option(
    "--service",
    default=f"{DEFAULT_SERVICE_NAMESPACE}/{DEFAULT_SERVICE_NAME}",
    show_default=True,
    metavar="NAMESPACE/NAME",
    help="Service whose DNS names the certificate covers.",
)
@click.option("--host", "hosts", multiple=True, help="Extra DNS name or IP address. Repeatable.")
@click.option(
    "--days", type=int, default=365, show_default=True, help="Validity of the certificates."
)
def certs(out_dir: Path, service: str, hosts: tuple[str, ...], days: int) -> None:
    """Write a self-signed CA and a serving certificate for the conversion webhook."""
    namespace, name = _split_service(service)
    pair = self_signed([*service_hosts(namespace, name), *hosts], days=days)
    for path in pair.write(out_dir):
        click.echo(str(path))


# --------------------------------------------------------------------------- webhook


@kube.command("webhook")
@click.option(
    "--cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM serving certificate (chain) of the webhook.",
)
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --cert.",
)
@click.option(
    "--host",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on: the API server must reach it.",
)
@click.option("--port", type=int, default=8443, show_default=True, help="Port to listen on.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    help="Least severe log level written (debug, info, warning, error).",
)
def webhook(cert: Path, key: Path, host: str, port: int, log_level: str) -> None:
    """Serve only the v1alpha1⇄v1 conversion webhook over HTTPS."""
    _setup_logging(log_level)

    async def serve() -> None:
        stop = await _until_signal()
        server = await start_webhook_server(cert, key, host, port)
        click.echo(f"conversion webhook on {server.url}", err=True)
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except MeshextError as exc:
        raise click.ClickException(str(exc)) from exc


# --------------------------------------------------------------------------- controller


@kube.command("controller")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Default: in-cluster.")
@click.option("--context", help="kubeconfig context.")
@click.option(
    "--namespace",
    default=lambda: os.environ.get("POD_NAMESPACE", DEFAULT_SERVICE_NAMESPACE),
    show_default="$POD_NAMESPACE or meshext-system",
    help="Namespace of the controller (its Lease lives there).",
)
@click.option(
    "--identity",
    default=lambda: os.environ.get("POD_NAME", socket.gethostname()),
    show_default="$POD_NAME or the host name",
    help="This replica's name in the Lease.",
)
@click.option(
    "--lease-name",
    default=LEASE_NAME,
    show_default=True,
    help="Name of the Lease the replicas elect a leader with.",
)
@click.option(
    "--leader-election/--no-leader-election",
    default=True,
    show_default=True,
    help="Write only while holding the Lease (needed with several replicas).",
)
@click.option(
    "--module-url",
    help="Base URL proxies reach the module server at, e.g. "
    "http://meshext.meshext-system.svc:8080 (shown in status.deployment.url).",
)
@click.option(
    "--istio/--no-istio",
    default=False,
    show_default=True,
    help="Render extensions into Istio WasmPlugin / EnvoyFilter resources.",
)
@click.option(
    "--root-namespace",
    default=DEFAULT_ROOT_NAMESPACE,
    show_default=True,
    help="Istio's root namespace: where mesh-wide rendered resources go (with --istio).",
)
@click.option(
    "--module-source",
    type=click.Choice(["http", "oci"]),
    default="http",
    show_default=True,
    help="WasmPlugin url: meshext's module server, or the image for Istio to pull.",
)
@click.option("--module-cluster", help="Envoy cluster of the module server (exact placement).")
@click.option(
    "--admin-address",
    default="127.0.0.1:8080",
    show_default=True,
    help="Health, readiness, debug and modules (plain HTTP). In a pod, 0.0.0.0:8080: "
    "probes and proxies reach it there.",
)
@click.option(
    "--webhook-address",
    default="0.0.0.0:8443",
    show_default=True,
    help="Conversion webhook (HTTPS): the API server must reach it.",
)
@click.option(
    "--webhook-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM serving certificate of the conversion webhook (with --webhook-key).",
)
@click.option(
    "--webhook-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --webhook-cert.",
)
@click.option(
    "--webhook-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA that signed --webhook-cert: the leader keeps it as the caBundle of the "
    "ServiceMeshExtension CRD.",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Module cache folder (default: $MESHEXT_CACHE/modules or ~/.cache/meshext/modules).",
)
@registry_transport_options
@local_images_option
@click.option(
    "--workers",
    type=int,
    default=4,
    show_default=True,
    help="Extensions reconciled at once.",
)
@click.option(
    "--resync-period",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds between full reconciliations of every extension.",
)
@signature_options
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    help="Least severe log level written (debug, info, warning, error).",
)
def controller(
    *,
    kubeconfig: str | None,
    context: str | None,
    namespace: str,
    identity: str,
    lease_name: str,
    leader_election: bool,
    module_url: str | None,
    istio: bool,
    root_namespace: str,
    module_source: str,
    module_cluster: str | None,
    admin_address: str,
    webhook_address: str,
    webhook_cert: Path | None,
    webhook_key: Path | None,
    webhook_ca: Path | None,
    cache_dir: Path | None,
    insecure_registry: tuple[str, ...],
    ca_file: Path | None,
    registry_config: Path | None,
    workers: int,
    resync_period: float,
    trusted_keys: Path | None,
    signature_policy: str | None,
    log_level: str,
) -> None:
    """Run the controller: status for ServiceMeshExtensions, the module server, the
    conversion webhook, and (with --istio) Istio resources for every ready extension."""
    _setup_logging(log_level)
    if (webhook_cert is None) != (webhook_key is None):
        raise click.UsageError("--webhook-cert and --webhook-key go together")
    if webhook_ca is not None and webhook_cert is None:
        raise click.UsageError("--webhook-ca needs --webhook-cert and --webhook-key")
    if istio and module_source == "http" and not module_url:
        raise click.UsageError("--istio with --module-source http needs --module-url")
    try:
        registry = registry_options(insecure_registry, ca_file, registry_config)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read registry credentials: {exc}") from exc
    admin_host, admin_port = _split_address(admin_address)
    webhook_host, webhook_port = _split_address(webhook_address)
    istio_options = (
        IstioOptions(
            root_namespace=root_namespace,
            module_base_url=module_url,
            module_source="oci" if module_source == "oci" else "http",
            module_cluster=module_cluster,
        )
        if istio
        else None
    )
    options = RunOptions(
        settings=ControllerSettings(
            namespace=namespace,
            identity=identity,
            lease_name=lease_name,
            leader_election=leader_election,
            module_base_url=module_url,
            istio=istio_options,
            workers=workers,
            resync_period=resync_period,
        ),
        cache_dir=cache_dir or default_cache_dir(),
        kubeconfig=kubeconfig,
        context=context,
        registry=registry,
        signatures=signature_policy_of(trusted_keys, signature_policy),
        admin_host=admin_host,
        admin_port=admin_port,
        webhook_cert=webhook_cert,
        webhook_key=webhook_key,
        webhook_ca=webhook_ca,
        webhook_host=webhook_host,
        webhook_port=webhook_port,
        local_images=local_image_folders(),
    )

    async def main() -> None:
        stop = await _until_signal()
        await run_controller(options, stop)

    try:
        asyncio.run(main())
    except MeshextError as exc:
        raise click.ClickException(str(exc)) from exc


kube.add_command(migrate)
