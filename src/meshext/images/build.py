"""Building Maistra-format extension images, byte for byte reproducibly.

The image has one gzip layer holding ``/manifest.yaml`` and the module at
``/plugin.wasm``, so the same image serves Maistra (which reads manifest.yaml) and
Istio's WasmPlugin (which takes ``plugin.wasm``). Its config is an ordinary OCI image
config (``linux/amd64``, as Maistra's ``FROM scratch`` images were), so container tools
copy and inspect it like any image.

Same inputs, same bytes: tar entries in a fixed order with mtime 0, uid/gid 0 and no
user names; gzip with mtime 0; JSON with sorted keys and no timestamps.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshext.api.manifest import ExtensionManifest, render_manifest
from meshext.images.files import atomic_write
from meshext.images.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Descriptor,
    sha256_digest,
)

MODULE_PATH = "plugin.wasm"
LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass(frozen=True)
class BuiltImage:
    manifest: bytes
    manifest_descriptor: Descriptor
    blobs: dict[str, bytes]
    """Every blob (config and layer) by digest."""


def build_image(module: bytes, manifest: ExtensionManifest) -> BuiltImage:
    """The image holding ``module`` as ``/plugin.wasm`` and ``manifest`` (module rewritten)."""
    manifest = manifest.model_copy(update={"module": MODULE_PATH})
    files = {"manifest.yaml": render_manifest(manifest), MODULE_PATH: module}
    layer_tar = _tar(files)
    layer = gzip.compress(layer_tar, compresslevel=9, mtime=0)
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_tar)]},
            "history": [{"created_by": "meshext image build"}],
        }
    )
    config_descriptor = Descriptor(OCI_CONFIG, sha256_digest(config), len(config))
    layer_descriptor = Descriptor(OCI_LAYER_GZIP, sha256_digest(layer), len(layer))
    annotations = {"org.opencontainers.image.title": manifest.name}
    if manifest.version:
        annotations["org.opencontainers.image.version"] = manifest.version
    image_manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor.to_json(),
            "layers": [layer_descriptor.to_json()],
            "annotations": annotations,
        }
    )
    return BuiltImage(
        manifest=image_manifest,
        manifest_descriptor=Descriptor(
            OCI_MANIFEST, sha256_digest(image_manifest), len(image_manifest)
        ),
        blobs={config_descriptor.digest: config, layer_descriptor.digest: layer},
    )


def write_layout(folder: Path, image: BuiltImage, tag: str | None) -> None:
    """Add ``image`` to the OCI image layout at ``folder`` (created if missing).

    An existing entry with the same tag is replaced; other entries are kept.
    """
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    staging = folder / "blobs"
    for digest, data in {**image.blobs, image.manifest_descriptor.digest: image.manifest}.items():
        target = blobs / digest.removeprefix("sha256:")
        if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != target.name:
            atomic_write(target, data, staging)
    atomic_write(folder / "oci-layout", LAYOUT_VERSION, staging)
    entries: list[dict[str, Any]] = []
    index_path = folder / "index.json"
    if index_path.is_file():
        existing = json.loads(index_path.read_bytes())
        entries = [
            entry
            for entry in existing.get("manifests", [])
            if tag is None or (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag
        ]
    entry = image.manifest_descriptor.to_json()
    if tag is not None:
        entry["annotations"] = {REF_NAME_ANNOTATION: tag}
    if entry not in entries:
        entries.append(entry)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    atomic_write(index_path, _json(index), staging)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
