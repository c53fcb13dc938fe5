"""Option parsing shared by several commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from meshext.images.auth import DockerConfig
from meshext.images.config import RegistryConfig
from meshext.images.http_module import HttpModulePolicy
from meshext.images.secrets import load_docker_config


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
        insecure_registries=frozenset(insecure_registry), ca_file=ca_file, credentials=credentials
    )


def with_http_module_policy(config: RegistryConfig, *, allow_unpinned: bool) -> RegistryConfig:
    """``config`` with the operator's policy for WasmPlugin http(s) module URLs."""
    policy = dataclasses.replace(HttpModulePolicy(), require_sha256=not allow_unpinned)
    return dataclasses.replace(config, http_modules=policy)
