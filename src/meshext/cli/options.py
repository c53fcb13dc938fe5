"""Option parsing shared by several commands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from meshext.images.auth import DockerConfig
from meshext.images.config import RegistryConfig
from meshext.images.http_module import HttpModulePolicy
from meshext.images.secrets import load_docker_config

F = TypeVar("F", bound=Callable[..., object])
_ALLOWED_PRIVATE = "meshext.allowed_private_registries"


def allow_private_registry_option(command: F) -> F:
    """``--allow-private-registry HOST[:PORT]``: the value is kept on the click context
    and read by :func:`allowed_private_registries`, so commands need no parameter."""

    def keep(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
        ctx.meta[_ALLOWED_PRIVATE] = value

    return click.option(
        "--allow-private-registry",
        multiple=True,
        metavar="HOST[:PORT]",
        expose_value=False,
        callback=keep,
        help="Registry (or token server, or redirect target) that may resolve to a "
        "loopback, link-local or private address. Repeatable. Registries listed with "
        "--insecure-registry are allowed too.",
    )(command)


_LOCAL_IMAGES = "meshext.local_images"


def local_images_option(command: F) -> F:
    """``--local-images DIR`` (repeatable), kept on the click context like
    ``--allow-private-registry`` and read by :func:`local_image_folders`."""

    def keep(ctx: click.Context, _param: click.Parameter, value: tuple[Path, ...]) -> None:
        ctx.meta[_LOCAL_IMAGES] = value

    return click.option(
        "--local-images",
        multiple=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        expose_value=False,
        callback=keep,
        help="Folder that file: and oci-layout: images may be read from. Repeatable. "
        "Without it, local images are refused.",
    )(command)


def registry_transport_options(command: F) -> F:
    """``--insecure-registry``, ``--allow-private-registry``, ``--ca-file`` and
    ``--registry-config``: how a command reaches registries, read back by
    :func:`registry_options`."""
    options: tuple[Callable[[F], F], ...] = (
        click.option(
            "--insecure-registry", multiple=True, help="Registry host reached over plain HTTP."
        ),
        allow_private_registry_option,
        click.option(
            "--ca-file",
            type=click.Path(exists=True, path_type=Path),
            default=None,
            help="PEM file of extra CAs trusted for HTTPS registries.",
        ),
        click.option(
            "--registry-config",
            type=click.Path(exists=True, path_type=Path),
            default=None,
            help="Docker config.json with registry credentials.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def listen_address_options(command: F) -> F:
    """``--xds-address``, ``--admin-address`` and ``--module-address``: where the control
    plane's servers listen, on loopback unless the operator says otherwise."""
    options = (
        click.option(
            "--xds-address",
            default="127.0.0.1:15010",
            show_default=True,
            help="Where the xDS server listens (gRPC, mutual TLS); 0 as port picks a free one.",
        ),
        click.option(
            "--admin-address",
            default="127.0.0.1:15014",
            show_default=True,
            help="Where the admin API (health, status, metrics) listens, host:port.",
        ),
        click.option(
            "--module-address",
            default="127.0.0.1:15080",
            show_default=True,
            help="Where the module server listens (remote delivery fetches modules there).",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def local_image_folders() -> tuple[Path, ...]:
    ctx = click.get_current_context(silent=True)
    return tuple(ctx.meta.get(_LOCAL_IMAGES, ())) if ctx is not None else ()


def allowed_private_registries() -> frozenset[str]:
    ctx = click.get_current_context(silent=True)
    return frozenset(ctx.meta.get(_ALLOWED_PRIVATE, ())) if ctx is not None else frozenset()


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` → ``{"k": "v", "k2": "v2"}``."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{part!r} is not key=value", param_hint="--labels")
        labels[key] = value
    return labels


def registry_options(
    insecure_registry: tuple[str, ...], ca_file: Path | None, registry_config: Path | None
) -> RegistryConfig:
    """Registry transport settings from the --insecure-registry, --ca-file and
    --registry-config options."""
    credentials: DockerConfig = load_docker_config(registry_config)
    return RegistryConfig(
        insecure_registries=frozenset(insecure_registry),
        allowed_private_registries=allowed_private_registries(),
        ca_file=ca_file,
        credentials=credentials,
    )


def with_http_module_policy(config: RegistryConfig, *, allow_unpinned: bool) -> RegistryConfig:
    """``config`` with the operator's policy for WasmPlugin http(s) module URLs."""
    policy = dataclasses.replace(HttpModulePolicy(), require_sha256=not allow_unpinned)
    return dataclasses.replace(config, http_modules=policy)
