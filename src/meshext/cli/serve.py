"""``meshext serve`` and ``meshext bootstrap``: run the control plane, configure a sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

import click
import yaml

from meshext.cli.options import parse_labels, registry_options
from meshext.envoy.bootstrap import AdsServer, BootstrapError, sidecar_bootstrap
from meshext.envoy.node import DeliveryMode, parse_host_port
from meshext.mesh.workload import ProxyKind
from meshext.server.app import ServeOptions, default_cache_dir, serve_forever


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
    help="Serve the resources of this cluster instead of a folder, writing status there.",
)
@click.option("--xds-address", default="127.0.0.1:15010", show_default=True)
@click.option("--admin-address", default="127.0.0.1:15014", show_default=True)
@click.option("--module-address", default="127.0.0.1:15080", show_default=True)
@click.option(
    "--module-delivery",
    type=click.Choice([m.value for m in DeliveryMode]),
    default=DeliveryMode.LOCAL.value,
    show_default=True,
    help="How proxies that do not choose get modules: a local file, or over HTTP.",
)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None)
@click.option("--cache-max-bytes", type=int, default=None, help="Evict unused modules past this.")
@click.option("--insecure-registry", multiple=True, help="Registry host reached over plain HTTP.")
@click.option("--ca-file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--registry-config", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
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
    log_level: str,
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
        registry=registry_options(insecure_registry, ca_file, registry_config),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(options, kubeconfig))


@click.command()
@click.option("--name", required=True, help="Workload name.")
@click.option("--namespace", "-n", required=True)
@click.option("--labels", "-l", default="", help="Workload labels, k=v,k2=v2.")
@click.option("--listen", required=True, help="Inbound port, or address:port.")
@click.option("--app", required=True, help="host:port of the application behind the sidecar.")
@click.option("--xds-address", default="127.0.0.1:15010", show_default=True)
@click.option("--delta", is_flag=True, help="Use the incremental (delta) xDS protocol.")
@click.option("--admin-port", type=int, default=15000, show_default=True)
@click.option("--gateway", is_flag=True, help="Configure a gateway instead of a sidecar.")
@click.option("--module-delivery", type=click.Choice([m.value for m in DeliveryMode]), default=None)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    help="Format of the printed bootstrap.",
)
def bootstrap(
    name: str,
    namespace: str,
    labels: str,
    listen: str,
    app: str,
    xds_address: str,
    delta: bool,
    admin_port: int,
    gateway: bool,
    module_delivery: str | None,
    output: str,
) -> None:
    """Print the Envoy bootstrap of a sidecar (or gateway) served by meshext."""
    try:
        document = sidecar_bootstrap(
            name=name,
            namespace=namespace,
            labels=parse_labels(labels),
            listen=listen,
            app=app,
            xds=AdsServer(parse_host_port(xds_address), delta=delta),
            admin_port=admin_port,
            kind=ProxyKind.GATEWAY if gateway else ProxyKind.SIDECAR,
            module_delivery=DeliveryMode(module_delivery) if module_delivery else None,
        )
    except (BootstrapError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if output == "json":
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(yaml.safe_dump(document, sort_keys=False), nl=False)
