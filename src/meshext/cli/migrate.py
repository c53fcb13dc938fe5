"""``meshext migrate``: ServiceMeshExtension manifests rewritten as Istio WasmPlugins.

The converted manifests go to stdout as YAML; every change of meaning is a warning
on stderr; documents that are not ServiceMeshExtensions pass through unchanged.
The exit status is 1 when a document could not be converted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from meshext.api import safe_yaml
from meshext.api.meta import SourceLocation
from meshext.istio.migrate import migrate_documents
from meshext.istio.render import DEFAULT_ROOT_NAMESPACE
from meshext.sources.folder import manifest_files


def _documents(paths: tuple[str, ...]) -> Iterator[tuple[SourceLocation | None, Any]]:
    for name in paths:
        if name == "-":
            sources = [("<stdin>", sys.stdin.read())]
        else:
            path = Path(name)
            if not path.exists():
                raise click.ClickException(f"{name}: no such file or folder")
            sources = [(str(p), p.read_text(encoding="utf-8")) for p in manifest_files(path)]
        for label, text in sources:
            try:
                loaded = list(safe_yaml.load_all(text))
            except safe_yaml.UnsafeYamlError as exc:
                raise click.ClickException(
                    f"{label} (document {exc.document}): not valid YAML: {exc}"
                ) from exc
            for index, document in enumerate(loaded, start=1):
                if document is not None:
                    yield SourceLocation(label, index), document


@click.command("migrate")
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--control-plane-namespace",
    default=DEFAULT_ROOT_NAMESPACE,
    show_default=True,
    help="Namespace of the ServiceMeshControlPlane: its extensions apply mesh-wide.",
)
@click.option(
    "--root-namespace",
    default=DEFAULT_ROOT_NAMESPACE,
    show_default=True,
    help="Istio's root namespace, where mesh-wide WasmPlugins go.",
)
def migrate(files: tuple[str, ...], control_plane_namespace: str, root_namespace: str) -> None:
    """Convert ServiceMeshExtension manifests (FILES, folders, or - for stdin) into
    Istio WasmPlugin manifests, warning wherever the meaning changes."""
    result = migrate_documents(
        _documents(files),
        control_plane_namespace=control_plane_namespace,
        root_namespace=root_namespace,
    )
    if result.documents:
        click.echo(yaml.safe_dump_all(result.documents, sort_keys=False), nl=False)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    click.echo(
        f"converted {result.converted} ServiceMeshExtension(s), "
        f"{len(result.warnings)} warning(s), {len(result.errors)} error(s)",
        err=True,
    )
    if result.errors:
        sys.exit(1)
