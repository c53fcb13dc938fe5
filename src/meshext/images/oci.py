"""OCI and Docker image documents: media types, descriptors, manifests and indexes.

Only what a puller of extension images needs is modelled. Manifests are parsed from
bytes whose digest has already been checked; :func:`parse_document` refuses
anything that is not an image manifest or an index (Docker schema 1 included).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from meshext.images.errors import InvalidImage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

WASM_ARTIFACT_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_ARTIFACT_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
CNCF_WASM_CONFIG = "application/vnd.wasm.config.v0+json"
CNCF_WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:`` digest, after checking its shape."""
    if not _DIGEST.match(digest):
        raise InvalidImage(f"unsupported digest {digest!r}: meshext reads sha256 digests")
    return digest.removeprefix("sha256:")


@dataclass(frozen=True)
class Platform:
    os: str = ""
    architecture: str = ""
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            document["platform"] = {
                "architecture": self.platform.architecture,
                "os": self.platform.os,
            }
        if self.annotations:
            document["annotations"] = dict(sorted(self.annotations.items()))
        return document


@dataclass(frozen=True)
class ImageManifest:
    """An OCI image manifest or a Docker schema 2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str = ""


@dataclass(frozen=True)
class ImageIndex:
    """An OCI image index or a Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]


def parse_document(data: bytes, media_type: str, where: str) -> ImageManifest | ImageIndex:
    """Parse a manifest or index; ``media_type`` is the transport's claim, if any."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidImage(f"{where}: the manifest is not valid JSON") from exc
    if not isinstance(document, dict):
        raise InvalidImage(f"{where}: the manifest is not a JSON object")
    kind = str(document.get("mediaType") or media_type or "")
    if kind in DOCKER_SCHEMA1 or document.get("schemaVersion") == 1:
        raise InvalidImage(
            f"{where}: Docker schema 1 manifests are not supported; push the image again "
            "with a current tool"
        )
    if not kind:
        kind = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    try:
        if kind in INDEX_TYPES:
            return ImageIndex(kind, tuple(_descriptor(d) for d in document["manifests"]))
        if kind in MANIFEST_TYPES:
            return ImageManifest(
                kind,
                _descriptor(document["config"]),
                tuple(_descriptor(d) for d in document.get("layers") or ()),
                str(document.get("artifactType") or ""),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidImage(f"{where}: malformed {kind} document: {exc}") from exc
    raise InvalidImage(f"{where}: unsupported manifest media type {kind!r}")


def _descriptor(value: Any) -> Descriptor:
    if not isinstance(value, dict):
        raise ValueError("a descriptor is not an object")
    platform = value.get("platform")
    annotations = value.get("annotations") or {}
    size = value["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"descriptor size {size!r} is not a non-negative integer")
    return Descriptor(
        media_type=str(value.get("mediaType", "")),
        digest=str(value["digest"]),
        size=size,
        platform=(
            Platform(
                os=str(platform.get("os", "")),
                architecture=str(platform.get("architecture", "")),
                variant=str(platform.get("variant", "")),
            )
            if isinstance(platform, dict)
            else None
        ),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def select_platform(index: ImageIndex, where: str) -> Descriptor:
    """The entry of ``index`` meshext runs: linux/amd64, else a wasm platform.

    An index with a single entry that names no platform (as artifact indexes do)
    gives that entry. Anything else without a match is an error listing what the
    index offers.
    """
    for wanted in (_is_linux_amd64, _is_wasm):
        for entry in index.manifests:
            if entry.platform is not None and wanted(entry.platform):
                return entry
    if len(index.manifests) == 1 and index.manifests[0].platform is None:
        return index.manifests[0]
    offered = ", ".join(str(d.platform) for d in index.manifests if d.platform) or "none"
    raise InvalidImage(
        f"{where}: the image index has no linux/amd64 or wasm entry (platforms: {offered})"
    )


def _is_linux_amd64(platform: Platform) -> bool:
    return platform.os == "linux" and platform.architecture == "amd64"


def _is_wasm(platform: Platform) -> bool:
    return platform.architecture == "wasm" or platform.os.startswith("wasi")
