"""``meshext quickstart``: the control plane, a demo app and its Envoy sidecar, on loopback."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from meshext.cli.console import make_console
from meshext.cli.options import listen_address_options
from meshext.quickstart.run import QuickstartOptions, run_quickstart


@click.command()
@click.option(
    "--config",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("examples/quickstart"),
    show_default=True,
    help="Folder of resources to serve.",
)
@click.option(
    "--sidecar-port",
    type=int,
    default=18000,
    show_default=True,
    help="Loopback port of the demo sidecar's listener.",
)
@click.option(
    "--envoy-admin-port",
    type=int,
    default=19000,
    show_default=True,
    help="Loopback port of the demo sidecar's Envoy admin interface.",
)
@listen_address_options
@click.option("--once", is_flag=True, help="Exit after the tour instead of running until Ctrl-C.")
def quickstart(
    config: Path,
    sidecar_port: int,
    envoy_admin_port: int,
    xds_address: str,
    admin_address: str,
    module_address: str,
    once: bool,
) -> None:
    """Run meshext with a demo app and its Envoy sidecar, and show the extensions at work."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = QuickstartOptions(
        config=config.resolve(),
        sidecar_port=sidecar_port,
        envoy_admin_port=envoy_admin_port,
        xds_address=xds_address,
        admin_address=admin_address,
        module_address=module_address,
        stay=not once,
    )
    ok = asyncio.run(run_quickstart(options, make_console()))
    sys.exit(0 if ok else 1)
