"""``meshext image``: build, push, pull and inspect extension images."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from meshext.api.manifest import ExtensionManifest
from meshext.api.phase import Phase
from meshext.cli.options import allow_private_registry_option, allowed_private_registries
from meshext.cli.trust_options import signature_options
from meshext.cli.trust_options import signature_policy as signature_policy_of
from meshext.images.auth import CredentialsError
from meshext.images.build import build_image, write_layout
from meshext.images.cache import ModuleCache
from meshext.images.client import RegistryClient
from meshext.images.config import RegistryConfig
from meshext.images.errors import ImageError
from meshext.images.push import push_layout
from meshext.images.reference import (
    ImageReferenceError,
    ReferenceKind,
    parse_image_reference,
)
from meshext.images.resolver import ImageResolver, PullRequest
from meshext.images.secrets import MappingPullSecretStore, load_docker_config
from meshext.images.trust import SIGNATURES_OFF, SignaturePolicy
from meshext.images.verification import SignatureVerifier
from meshext.mesh.resolution import ResolvedModule

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_stderr = Console(stderr=True)


@click.group("image")
def image() -> None:
    """Build, push, pull and inspect extension images."""


def _registry_options(command: F) -> F:
    options = (
        click.option(
            "--insecure-registry",
            "insecure",
            multiple=True,
            metavar="HOST[:PORT]",
            help="Registry (or token server) that may be reached over plain HTTP. Repeatable.",
        ),
        click.option(
            "--ca-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="PEM file of extra CAs trusted for HTTPS registries.",
        ),
        click.option(
            "--registry-config",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Docker config.json with registry credentials "
            "(default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return allow_private_registry_option(command)


def _registry_config(
    insecure: tuple[str, ...], ca_file: Path | None, registry_config: Path | None
) -> RegistryConfig:
    try:
        credentials = load_docker_config(registry_config)
    except (OSError, CredentialsError) as exc:
        raise click.ClickException(f"cannot read registry credentials: {exc}") from exc
    return RegistryConfig(
        insecure_registries=frozenset(insecure),
        allowed_private_registries=allowed_private_registries(),
        ca_file=ca_file,
        credentials=credentials,
    )


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except (ImageError, ImageReferenceError) as exc:
        raise click.ClickException(str(exc)) from exc


class _TransferBar:
    """Reports one transfer on a rich progress bar (stderr)."""

    def __init__(self, progress: Progress, label: str) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task(label, total=None)

    def expect(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, amount: int) -> None:
        self._progress.advance(self._task, amount)


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_stderr,
        transient=True,
        disable=quiet,
    )


def _default_cache() -> Path:
    root = os.environ.get("MESHEXT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "meshext") / "modules"


_cache_option = click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Module cache folder (default: $MESHEXT_CACHE/modules or ~/.cache/meshext/modules).",
)
_policy_option = click.option(
    "--pull-policy",
    type=click.Choice(["Always", "IfNotPresent"]),
    default="Always",
    show_default=True,
    help="Ask the registry what a tag points to (Always) or trust the cache (IfNotPresent).",
)
_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


async def _resolve(
    reference: str,
    config: RegistryConfig,
    cache_dir: Path | None,
    policy: str,
    quiet: bool,
    signatures: SignaturePolicy = SIGNATURES_OFF,
) -> ResolvedModule:
    resolver = ImageResolver(
        ModuleCache(cache_dir or _default_cache()),
        MappingPullSecretStore(),
        registry_config=config,
        signatures=SignatureVerifier(signatures),
    )
    try:
        with _progress(quiet) as progress:
            return await resolver.pull(
                PullRequest(image=reference, policy=policy),
                _TransferBar(progress, f"pulling {reference}"),
            )
    finally:
        await resolver.aclose()


# -- build -----------------------------------------------------------------------------


@image.command("build")
@click.option(
    "--wasm",
    "wasm_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The proxy-wasm module.",
)
@click.option("--name", required=True, help="Extension name written to manifest.yaml.")
@click.option(
    "--phase",
    type=click.Choice([p.value for p in Phase]),
    help="Default phase for extensions that set none.",
)
@click.option("--priority", type=int, help="Default priority for extensions that set none.")
@click.option("--description", default="", help="Free text for manifest.yaml.")
@click.option("--version", "version", default="", help="Extension version for manifest.yaml.")
@click.option(
    "--root-id",
    default=None,
    help="The root id the module registers its root context under (manifest.yaml rootId).",
)
@click.option(
    "--output-layout",
    metavar="DIR[:TAG]",
    help="Write the image into an OCI image layout folder (tag default: latest).",
)
@click.option("--tag", "target", metavar="REF", help="Push the image to a registry as REF.")
@_registry_options
@_quiet_option
def build(
    *,
    wasm_file: Path,
    name: str,
    phase: str | None,
    priority: int | None,
    description: str,
    version: str,
    root_id: str | None,
    output_layout: str | None,
    target: str | None,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    registry_config: Path | None,
    quiet: bool,
) -> None:
    """Build a Maistra-format image (also readable by Istio) from a module."""
    if (output_layout is None) == (target is None):
        raise click.UsageError("give exactly one of --output-layout and --tag")
    manifest = ExtensionManifest(
        schema_version=1,
        name=name,
        description=description,
        version=version,
        phase=Phase.parse(phase) if phase else None,
        priority=priority,
        root_id=root_id,
        module="plugin.wasm",
    )
    built = build_image(wasm_file.read_bytes(), manifest)
    if output_layout is not None:
        folder, tag = _split_layout(output_layout)
        write_layout(folder, built, tag)
        click.echo(f"{built.manifest_descriptor.digest} oci-layout:{folder}:{tag}")
        return
    assert target is not None
    config = _registry_config(insecure, ca_file, registry_config)
    with tempfile.TemporaryDirectory(prefix="meshext-build-") as staging:
        write_layout(Path(staging), built, "build")
        digest = _run(_push(Path(staging), "build", target, config, quiet))
    click.echo(f"{digest} {target}")


def _split_layout(text: str) -> tuple[Path, str]:
    reference = parse_image_reference(f"oci-layout:{text}")
    if reference.digest:
        raise click.BadParameter("a layout to write names a tag, not a digest")
    return Path(reference.path), reference.tag or "latest"


# -- push ------------------------------------------------------------------------------


@image.command("push")
@click.argument("source")
@click.argument("destination")
@_registry_options
@_quiet_option
def push(
    *,
    source: str,
    destination: str,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    registry_config: Path | None,
    quiet: bool,
) -> None:
    """Push SOURCE (an OCI layout: DIR[:tag] or oci-layout:DIR[:tag|@digest]) to DESTINATION."""
    text = source if source.startswith("oci-layout:") else f"oci-layout:{source}"
    try:
        reference = parse_image_reference(text)
    except ImageReferenceError as exc:
        raise click.BadParameter(str(exc), param_hint="SOURCE") from exc
    config = _registry_config(insecure, ca_file, registry_config)
    digest = _run(
        _push(
            Path(reference.path),
            reference.digest or reference.tag or "",
            destination,
            config,
            quiet,
        )
    )
    click.echo(f"{digest} {destination}")


async def _push(
    layout: Path, reference: str, destination: str, config: RegistryConfig, quiet: bool
) -> str:
    target = parse_image_reference(destination)
    if target.kind is not ReferenceKind.REGISTRY or target.tag is None or target.digest:
        raise click.BadParameter(
            "the destination is a registry image with a tag", param_hint="DESTINATION"
        )
    credentials = config.credentials.credentials_for(target.registry, target.repository)
    async with RegistryClient(target.registry, config, credentials, push=True) as client:
        with _progress(quiet) as progress:
            return await push_layout(
                layout,
                reference,
                client,
                repository=target.repository,
                tag=target.tag,
                limits=config.limits,
                progress=_TransferBar(progress, f"pushing {destination}"),
            )


# -- pull and inspect ------------------------------------------------------------------


@image.command("pull")
@click.argument("reference")
@click.option(
    "--output",
    "-o",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Copy the module to this file.",
)
@_cache_option
@_policy_option
@_registry_options
@_quiet_option
def pull(
    *,
    reference: str,
    output: Path | None,
    cache_dir: Path | None,
    pull_policy: str,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    registry_config: Path | None,
    quiet: bool,
) -> None:
    """Pull REFERENCE's module into the cache (and to --output); print its sha256 and path."""
    config = _registry_config(insecure, ca_file, registry_config)
    module = _run(_resolve(reference, config, cache_dir, pull_policy, quiet))
    if output is not None:
        output.write_bytes(Path(module.path).read_bytes())
    click.echo(f"sha256:{module.sha256} {output or module.path}")


@image.command("inspect")
@click.argument("reference")
@click.option(
    "--output",
    "-o",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Text for people or JSON for programs.",
)
@_cache_option
@_policy_option
@_registry_options
@signature_options
@_quiet_option
def inspect(
    *,
    reference: str,
    output_format: str,
    cache_dir: Path | None,
    pull_policy: str,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    registry_config: Path | None,
    trusted_keys: Path | None,
    signature_policy: str | None,
    quiet: bool,
) -> None:
    """Show REFERENCE's format, digests, manifest.yaml, proxy-wasm ABI versions and, with
    --trusted-keys, the key whose signature was verified."""
    config = _registry_config(insecure, ca_file, registry_config)
    policy = signature_policy_of(trusted_keys, signature_policy)
    module = _run(
        _resolve(
            reference, config, cache_dir, pull_policy, quiet or output_format == "json", policy
        )
    )
    report = describe_module(reference, module)
    if output_format == "json":
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for inner, text in value.items():
                click.echo(f"  {inner}: {text}")
        elif isinstance(value, list):
            click.echo(f"{key}: {', '.join(str(v) for v in value) or '-'}")
        else:
            click.echo(f"{key}: {value if value is not None else '-'}")


def describe_module(reference: str, module: ResolvedModule) -> dict[str, Any]:
    """What ``inspect`` reports, as plain data."""
    return {
        "reference": reference,
        "format": module.image_format.value,
        "imageDigest": module.image_digest,
        "moduleSha256": module.sha256,
        "size": module.size,
        "abiVersions": [f"proxy_abi_version_{v}" for v in module.abi_versions],
        "signer": module.signer,
        "manifest": (
            module.manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
            if module.manifest is not None
            else None
        ),
    }
