"""Image pull Secrets: a folder of Kubernetes ``Secret`` documents, and docker config.

:class:`FolderPullSecretStore` implements
:class:`meshext.mesh.resolution.PullSecretStore` over ``*.yaml``/``*.yml``/``*.json``
files under a folder (the same folder ``meshext serve --config`` reads is fine: every
other kind of document is ignored). A Secret counts when it is::

    apiVersion: v1
    kind: Secret
    type: kubernetes.io/dockerconfigjson   # or kubernetes.io/dockercfg
    metadata: {name: regcred, namespace: team-a}   # namespace defaults to "default"
    data: {.dockerconfigjson: <base64>}    # or stringData: {.dockerconfigjson: <json>}

The folder is read again when a file under it changed (by mtime and size), so new
Secrets are seen on the next resolve.

:func:`load_docker_config` reads ``$DOCKER_CONFIG/config.json`` (default
``~/.docker/config.json``), the fallback credentials for images no Secret covers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from meshext.api import safe_yaml
from meshext.images.auth import DockerConfig
from meshext.images.errors import ImageError
from meshext.images.local import read_regular

DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CFG = "kubernetes.io/dockercfg"
_KEYS = {DOCKER_CONFIG_JSON: ".dockerconfigjson", DOCKER_CFG: ".dockercfg"}
_SUFFIXES = (".yaml", ".yml", ".json")


class FolderPullSecretStore:
    """Pull Secrets found in the YAML/JSON files under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._secrets: dict[tuple[str, str], bytes] = {}
        self.problems: list[str] = []
        """Secret documents of a pull-secret type that could not be read, with why."""

    def __repr__(self) -> str:
        return f"FolderPullSecretStore({str(self.folder)!r}, secrets={len(self._secrets)})"

    async def get(self, namespace: str, name: str) -> bytes | None:
        await asyncio.to_thread(self._refresh)
        return self._secrets.get((namespace, name))

    def _refresh(self) -> None:
        files = (
            sorted(p for p in self.folder.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
            if self.folder.is_dir()
            else []
        )
        signature = tuple((str(p), int(p.stat().st_mtime_ns), int(p.stat().st_size)) for p in files)
        if signature == self._signature:
            return
        secrets: dict[tuple[str, str], bytes] = {}
        problems: list[str] = []
        for path in files:
            try:
                data = read_regular(path, safe_yaml.DEFAULT_LIMITS.max_bytes, "manifest")
                documents = list(safe_yaml.load_all(data))
            except (OSError, ImageError, safe_yaml.UnsafeYamlError):
                continue  # the folder's loader reports what is wrong with this file
            for number, document in enumerate(documents, start=1):
                found = _pull_secret(document, f"{path} (document {number})", problems)
                if found is not None:
                    secrets[found[0]] = found[1]
        self._secrets, self.problems, self._signature = secrets, problems, signature


class MappingPullSecretStore:
    """Pull Secrets held in memory, keyed by ``(namespace, name)``."""

    def __init__(self, secrets: Mapping[tuple[str, str], bytes] | None = None) -> None:
        self._secrets = dict(secrets or {})

    async def get(self, namespace: str, name: str) -> bytes | None:
        return self._secrets.get((namespace, name))


def _pull_secret(
    document: object, where: str, problems: list[str]
) -> tuple[tuple[str, str], bytes] | None:
    if not isinstance(document, dict) or document.get("kind") != "Secret":
        return None
    kind = document.get("type")
    if kind not in _KEYS:
        return None
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: Secret without metadata.name")
        return None
    namespace = str(metadata.get("namespace") or "default")
    key = _KEYS[kind]
    string_data = document.get("stringData") or {}
    data = document.get("data") or {}
    if isinstance(string_data, dict) and isinstance(string_data.get(key), str):
        return (namespace, name), string_data[key].encode()
    if isinstance(data, dict) and isinstance(data.get(key), str):
        try:
            return (namespace, name), base64.b64decode(data[key], validate=True)
        except binascii.Error:
            problems.append(f"{where}: Secret {namespace}/{name}: data.{key} is not base64")
            return None
    problems.append(f"{where}: Secret {namespace}/{name} of type {kind} has no {key}")
    return None


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def load_docker_config(path: Path | None = None) -> DockerConfig:
    """Credentials of a docker ``config.json``; a missing default file gives none."""
    target = path or docker_config_path()
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        if path is not None:
            raise
        return DockerConfig()
    return DockerConfig.parse(data, str(target))
