"""Kubernetes commands: the controller, the conversion webhook, CRDs and migration."""

from __future__ import annotations

import click


@click.group("kube")
def kube() -> None:
    """Run meshext on Kubernetes."""
