"""Entry point of the ``meshext`` command: one group, a module per area."""

from __future__ import annotations

import click

from meshext import __version__
from meshext.cli.describe import describe, validate
from meshext.cli.identity import credentials
from meshext.cli.image import image
from meshext.cli.kube import kube
from meshext.cli.migrate import migrate
from meshext.cli.quickstart import quickstart
from meshext.cli.serve import bootstrap, serve
from meshext.cli.status import config_dump, proxies, status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshext")
def cli() -> None:
    """Deploy WebAssembly extensions to the Envoy proxies of a service mesh."""


cli.add_command(validate)
cli.add_command(describe)
cli.add_command(image)
cli.add_command(credentials)
cli.add_command(kube)
for command in (serve, bootstrap, status, proxies, config_dump, quickstart, migrate):
    cli.add_command(command)


def main() -> None:
    cli()
