"""Hand-built OCI image layouts and tar layers for tests.

Written from the OCI image-spec directly, independently of meshext's own image
builder, so tests compare meshext against the spec and against skopeo/umoci rather
than against itself. It can also build what no sane tool would: traversal paths,
links, devices, bombs, wrong digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_ARTIFACT_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_ARTIFACT_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
CNCF_CONFIG = "application/vnd.wasm.config.v0+json"
CNCF_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Entry:
    """One tar entry: a file by default; ``kind`` picks dir, symlink, hardlink, device."""

    name: str
    data: bytes = b""
    kind: str = "file"
    target: str = ""


def tar_layer(entries: list[Entry], *, compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mtime = 1_600_000_000
            info.mode = 0o644
            payload: io.BytesIO | None = None
            if entry.kind == "file":
                info.size = len(entry.data)
                payload = io.BytesIO(entry.data)
            elif entry.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.target
            elif entry.kind == "device":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            else:
                raise ValueError(entry.kind)
            archive.addfile(info, payload)
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layout:
    """An OCI image layout folder being written."""

    root: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self._write_index()

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = digest_of(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def image(
        self,
        tag: str | None,
        layers: list[tuple[str, bytes]],
        *,
        config: bytes | None = None,
        config_type: str = OCI_CONFIG,
        manifest_type: str = OCI_MANIFEST,
        artifact_type: str | None = None,
        platform: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Add an image manifest (and its blobs); returns its descriptor."""
        if config is None:
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": []},
                }
            ).encode()
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": self.blob(config, config_type),
            "layers": [self.blob(data, media_type) for media_type, data in layers],
        }
        if artifact_type:
            manifest["artifactType"] = artifact_type
        descriptor = self.blob(json.dumps(manifest).encode(), manifest_type)
        if platform:
            descriptor["platform"] = platform
        if tag is not None:
            self.tag(tag, descriptor)
        return descriptor

    def index(self, tag: str, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        descriptor = self.blob(json.dumps(document).encode(), OCI_INDEX)
        self.tag(tag, descriptor)
        return descriptor

    def tag(self, tag: str, descriptor: dict[str, Any]) -> None:
        entry = {**descriptor, "annotations": {REF_NAME: tag}}
        entry.pop("platform", None)
        self.entries = [e for e in self.entries if e["annotations"][REF_NAME] != tag] + [entry]
        self._write_index()

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}
        (self.root / "index.json").write_text(json.dumps(index))


def manifest_yaml(module: str = "extension.wasm", **fields: Any) -> bytes:
    lines = ["schemaVersion: 1", f"name: {fields.get('name', 'test-extension')}"]
    for key in ("description", "version", "phase", "priority"):
        if key in fields:
            lines.append(f"{key}: {fields[key]}")
    lines.append(f"module: {module}")
    return ("\n".join(lines) + "\n").encode()
