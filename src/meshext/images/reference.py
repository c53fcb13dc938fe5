"""Image references as users write them in ``spec.image``.

Three forms are accepted:

* a registry reference, ``[registry/]repository(:tag|@sha256:<hex>|:tag@sha256:<hex>)``,
  with Docker's defaults (``docker.io``, ``library/`` for single-component names).
  Maistra requires a tag or a digest: a bare repository is an error;
* ``oci-layout:<dir>[:tag|@digest]``, an OCI image layout folder on this host;
* ``file:<path>``, a plain ``.wasm`` module on this host;
* ``http://`` or ``https://`` URL of a plain ``.wasm`` module (WasmPlugin only), which
  meshext downloads, verifies and caches itself.

Relative local paths are resolved against a base folder (the folder of the manifest
that named them) by :meth:`ImageReference.with_base`.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$"
)


class ImageReferenceError(ValueError):
    """``spec.image`` cannot be understood."""


class ReferenceKind(StrEnum):
    REGISTRY = "registry"
    OCI_LAYOUT = "oci-layout"
    FILE = "file"
    HTTP = "http"


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference; ``str()`` gives back a canonical spelling."""

    kind: ReferenceKind
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: str = ""

    @property
    def is_local(self) -> bool:
        return self.kind in (ReferenceKind.FILE, ReferenceKind.OCI_LAYOUT)

    @property
    def is_latest(self) -> bool:
        """True for a registry reference that names ``latest`` and no digest."""
        return self.kind is ReferenceKind.REGISTRY and self.digest is None and self.tag == "latest"

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def version(self) -> str:
        """The digest when pinned, else the tag: what a registry is asked for."""
        return self.digest or self.tag or "latest"

    def with_base(self, base: Path) -> ImageReference:
        """Resolve a relative local path against ``base``; registry references are unchanged."""
        if not self.is_local or Path(self.path).is_absolute():
            return self
        return replace(self, path=str((base / self.path).resolve()))

    def __str__(self) -> str:
        if self.kind is ReferenceKind.HTTP:
            return self.path
        if self.kind is ReferenceKind.FILE:
            return f"file:{self.path}"
        if self.kind is ReferenceKind.OCI_LAYOUT:
            suffix = f"@{self.digest}" if self.digest else (f":{self.tag}" if self.tag else "")
            return f"oci-layout:{self.path}{suffix}"
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_image_reference(text: str) -> ImageReference:
    """Parse ``text``; raises :class:`ImageReferenceError` with the reason."""
    if not text or text != text.strip():
        raise ImageReferenceError(f"{text!r} is empty or has surrounding white space")
    if text.startswith("file:"):
        path = text.removeprefix("file:").removeprefix("//")
        if not path:
            raise ImageReferenceError("file: reference names no path")
        return ImageReference(kind=ReferenceKind.FILE, path=path)
    if text.startswith("oci-layout:"):
        return _parse_layout(text.removeprefix("oci-layout:").removeprefix("//"))
    if text.startswith(("http://", "https://")):
        return ImageReference(kind=ReferenceKind.HTTP, path=parse_module_url(text))
    return _parse_registry(text)


def parse_module_url(text: str) -> str:
    """An ``http(s)://`` module URL, checked; raises :class:`ImageReferenceError`.

    User names and passwords in the URL are refused: they would show in status,
    logs and rendered resources.
    """
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ImageReferenceError(f"{text!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImageReferenceError(f"{text!r} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ImageReferenceError(
            f"{parts.scheme}://{parts.hostname}: credentials in a module URL are refused"
        )
    if port == 0:
        raise ImageReferenceError(f"{text!r}: port 0 is not a port")
    if any(c.isspace() for c in text):
        raise ImageReferenceError(f"{text!r} contains white space")
    return text


def _parse_layout(rest: str) -> ImageReference:
    digest: str | None = None
    tag: str | None = None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        _check_digest(digest)
    else:
        head, sep, maybe_tag = rest.rpartition(":")
        if sep and "/" not in maybe_tag and _TAG.match(maybe_tag):
            rest, tag = head, maybe_tag
    if not rest:
        raise ImageReferenceError("oci-layout: reference names no folder")
    return ImageReference(kind=ReferenceKind.OCI_LAYOUT, path=rest, tag=tag, digest=digest)


def _parse_registry(text: str) -> ImageReference:
    remainder = text
    digest: str | None = None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        _check_digest(digest)
    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.match(tag):
            raise ImageReferenceError(f"invalid tag {tag!r} in {text!r}")
    if tag is None and digest is None:
        raise ImageReferenceError(
            f"{text!r} has neither a tag nor a digest; write {text}:<tag> or {text}@sha256:<digest>"
        )
    registry, repository = _split_registry(remainder, text)
    return ImageReference(
        kind=ReferenceKind.REGISTRY,
        registry=registry,
        repository=repository,
        tag=tag,
        digest=digest,
    )


def _split_registry(name: str, text: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN.match(first):
            raise ImageReferenceError(f"invalid registry host {first!r} in {text!r}")
        port = first.rpartition("]")[2].rpartition(":")[2] if ":" in first else ""
        if port and not 0 < int(port) <= 65535:
            raise ImageReferenceError(f"invalid port {port} in {text!r}: ports are 1-65535")
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    for component in repository.split("/"):
        if not _PATH_COMPONENT.match(component):
            raise ImageReferenceError(
                f"invalid repository {repository!r} in {text!r}: components are lowercase "
                "letters and digits separated by '.', '_', '__' or '-'"
            )
    return registry, repository


def _check_digest(digest: str) -> None:
    if not _DIGEST.match(digest):
        raise ImageReferenceError(
            f"invalid digest {digest!r}: expected sha256: and 64 lowercase hex digits"
        )


def registry_api_host(registry: str) -> str:
    """The host (``host[:port]``) serving the distribution API for ``registry``.

    Docker Hub is named ``docker.io`` in references but answers the API on
    ``registry-1.docker.io``; every other registry serves it on its own name.
    """
    return DOCKER_HUB_API_HOST if registry in DOCKER_HUB_ALIASES else registry


def canonical_registry(host: str) -> str:
    """The name references use for ``host``: Docker Hub's aliases become ``docker.io``."""
    return DEFAULT_REGISTRY if host in DOCKER_HUB_ALIASES else host
