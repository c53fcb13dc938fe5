"""``meshext image``: build, push, pull and inspect extension images."""

from __future__ import annotations

import click


@click.group("image")
def image() -> None:
    """Build, push, pull and inspect extension images."""
