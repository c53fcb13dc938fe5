"""``meshext serve`` and ``meshext bootstrap``: run the control plane, configure a sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
import yaml

from meshext.cli.identity import ca_options, ca_settings
from meshext.cli.options import (
    listen_address_options,
    local_image_folders,
    local_images_option,
    parse_labels,
    registry_options,
    registry_transport_options,
    with_http_module_policy,
)
from meshext.cli.trust_options import signature_options
from meshext.cli.trust_options import signature_policy as signature_policy_of
from meshext.envoy.bootstrap import AdsServer, BootstrapError, sidecar_bootstrap
from meshext.envoy.node import DeliveryMode, parse_host_port
from meshext.errors import MeshextError
from meshext.identity.errors import IdentityError
from meshext.identity.issuance import issue_for_proxy
from meshext.identity.spiffe import DEFAULT_SERVICE_ACCOUNT
from meshext.mesh.workload import ProxyKind
from meshext.server.app import ServeOptions, default_cache_dir, serve_forever


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (libuv) when uvloop is installed, unless
    ``MESHEXT_EVENT_LOOP=asyncio``; ``None`` (asyncio's own loop) otherwise.

    It costs less per callback, timer and socket event than asyncio's own loop, which
    is most of what the ADS server does (benchmarks/xds_vs_go_control_plane measured
    about a tenth less server CPU to connect 10,000 proxies and to push them a
    change)."""
    if os.environ.get("MESHEXT_EVENT_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 (optional: serve runs on asyncio's loop without it)
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@click.command()
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Folder of resource manifests to serve (watched for changes).",
)
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Serve the resources of this cluster instead of a folder, writing status there; "
    "images are judged by each mesh's signaturePolicy and the keys in ConfigMaps "
    "labelled meshext.io/trusted-keys=true, as by the controller.",
)
@listen_address_options
@click.option(
    "--module-delivery",
    type=click.Choice([m.value for m in DeliveryMode]),
    default=DeliveryMode.LOCAL.value,
    show_default=True,
    help="How proxies that do not choose get modules: a local file, or over HTTP.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Module cache folder (default: $MESHEXT_CACHE/modules or ~/.cache/meshext/modules).",
)
@click.option("--cache-max-bytes", type=int, default=None, help="Evict unused modules past this.")
@registry_transport_options
@local_images_option
@click.option(
    "--allow-unpinned-http-modules",
    is_flag=True,
    help="Accept WasmPlugin http(s) module URLs without spec.sha256 (trust the server).",
)
@signature_options
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning"]),
    help="Least severe log level written.",
)
@click.option(
    "--insecure-xds",
    is_flag=True,
    help="Serve xDS and modules in PLAINTEXT: anyone who reaches them can impersonate a proxy.",
)
@click.option(
    "--certificate-address",
    default="127.0.0.1:15012",
    show_default=True,
    help="With --kubeconfig: where proxies exchange a service-account token for a certificate.",
)
@click.option(
    "--token-audience",
    default="meshext",
    show_default=True,
    help="Audience the service-account tokens must be minted for.",
)
@click.option(
    "--xds-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Serve ADS streams from this many worker processes sharing the xDS address "
    "(0: in this process). Worth it with thousands of proxies on a machine with spare "
    "cores.",
)
@ca_options
def serve(
    config: Path | None,
    kubeconfig: Path | None,
    xds_address: str,
    admin_address: str,
    module_address: str,
    module_delivery: str,
    cache_dir: Path | None,
    cache_max_bytes: int | None,
    insecure_registry: tuple[str, ...],
    ca_file: Path | None,
    registry_config: Path | None,
    allow_unpinned_http_modules: bool,
    trusted_keys: Path | None,
    signature_policy: str | None,
    log_level: str,
    insecure_xds: bool,
    certificate_address: str,
    token_audience: str,
    xds_workers: int,
    mesh_ca_cert: Path | None,
    mesh_ca_key: Path | None,
    trust_domain: str,
) -> None:
    """Serve the extensions declared under --config (or in the cluster of --kubeconfig)
    to Envoy proxies over xDS (ADS)."""
    if (config is None) == (kubeconfig is None):
        raise click.UsageError("give exactly one of --config DIR and --kubeconfig FILE")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = ServeOptions(
        config=config,
        xds_address=xds_address,
        admin_address=admin_address,
        module_address=module_address,
        cache_dir=cache_dir or default_cache_dir(),
        cache_max_bytes=cache_max_bytes,
        module_delivery=DeliveryMode(module_delivery),
        registry=with_http_module_policy(
            registry_options(insecure_registry, ca_file, registry_config),
            allow_unpinned=allow_unpinned_http_modules,
        ),
        insecure_xds=insecure_xds,
        ca=ca_settings(mesh_ca_cert, mesh_ca_key, trust_domain),
        certificate_address=certificate_address,
        token_audience=token_audience,
        signatures=signature_policy_of(trusted_keys, signature_policy),
        local_images=local_image_folders(),
        xds_workers=xds_workers,
    )
    if insecure_xds:
        logging.getLogger("meshext").warning(
            "--insecure-xds: xDS and the module server run in PLAINTEXT without client "
            "authentication; any client that reaches them can read and change any proxy's "
            "configuration"
        )
    with contextlib.suppress(KeyboardInterrupt):
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(serve_forever(options, kubeconfig))
        except MeshextError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.command()
@click.option("--name", required=True, help="Workload name.")
@click.option("--namespace", "-n", required=True, help="Namespace of the workload.")
@click.option("--labels", "-l", default="", help="Workload labels, k=v,k2=v2.")
@click.option(
    "--listen",
    required=True,
    multiple=True,
    help="Inbound port, or address:port; repeat for more ports (same address and app).",
)
@click.option(
    "--outbound",
    multiple=True,
    help="PORT=HOST:PORT: the app sends to 127.0.0.1:PORT, Envoy forwards to HOST:PORT; "
    "repeatable (sidecars only).",
)
@click.option("--app", required=True, help="host:port of the application behind the sidecar.")
@click.option(
    "--xds-address",
    default="127.0.0.1:15010",
    show_default=True,
    help="host:port of the control plane's xDS server.",
)
@click.option("--delta", is_flag=True, help="Use the incremental (delta) xDS protocol.")
@click.option(
    "--admin-port",
    type=int,
    default=15000,
    show_default=True,
    help="Port of the proxy's Envoy admin interface (on loopback).",
)
@click.option("--gateway", is_flag=True, help="Configure a gateway instead of a sidecar.")
@click.option(
    "--module-delivery",
    type=click.Choice([m.value for m in DeliveryMode]),
    default=None,
    help="How this proxy gets modules (default: the server's --module-delivery).",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    help="Format of the printed bootstrap.",
)
@click.option(
    "--service-account",
    default=DEFAULT_SERVICE_ACCOUNT,
    show_default=True,
    help="Service account of the proxy's identity.",
)
@click.option(
    "--credentials-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the proxy's key, certificate and CA bundle "
    "(default: <state>/credentials/<namespace>/<service-account>).",
)
@click.option(
    "--insecure-xds", is_flag=True, help="Reach a server started with --insecure-xds (plaintext)."
)
@ca_options
def bootstrap(
    name: str,
    namespace: str,
    labels: str,
    listen: tuple[str, ...],
    outbound: tuple[str, ...],
    app: str,
    xds_address: str,
    delta: bool,
    admin_port: int,
    gateway: bool,
    module_delivery: str | None,
    output: str,
    service_account: str,
    credentials_dir: Path | None,
    insecure_xds: bool,
    mesh_ca_cert: Path | None,
    mesh_ca_key: Path | None,
    trust_domain: str,
) -> None:
    """Print the Envoy bootstrap of a sidecar (or gateway) served by meshext, and write
    its credentials (key, certificate from the mesh CA, CA bundle) for mutual TLS."""
    try:
        make = functools.partial(
            sidecar_bootstrap,
            name=name,
            namespace=namespace,
            labels=parse_labels(labels),
            listen=listen[0],
            extra_ports=listen[1:],
            outbound=outbound,
            app=app,
            admin_port=admin_port,
            kind=ProxyKind.GATEWAY if gateway else ProxyKind.SIDECAR,
            module_delivery=DeliveryMode(module_delivery) if module_delivery else None,
        )
        address = parse_host_port(xds_address)
        document = make(xds=AdsServer(address, delta=delta))  # arguments checked first
        if not insecure_xds:
            settings = ca_settings(mesh_ca_cert, mesh_ca_key, trust_domain)
            _, tls = issue_for_proxy(settings, namespace, service_account, credentials_dir)
            document = make(xds=AdsServer(address, delta=delta, tls=tls))
    except (BootstrapError, IdentityError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if output == "json":
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(yaml.safe_dump(document, sort_keys=False), nl=False)
