"""The four ways a proxy-wasm module is packed in an OCI image, and reading each.

============================  ===============================================  ===========
format                        how it is recognised                             module
============================  ===============================================  ===========
Maistra                       tar layers whose filesystem holds /manifest.yaml  the file
                                                                               manifest.yaml
                                                                               names
Istio compat                  tar layers, no /manifest.yaml, /plugin.wasm       /plugin.wasm
wasm artifact (Istio/wasme)   config ``application/vnd.module.wasm.config.     the layer of
                              v1+json`` or a layer ``application/vnd.module.   that type
                              wasm.content.layer.v1+wasm``
CNCF wasm artifact            config ``application/vnd.wasm.config.v0+json``   the single
                              or a layer ``application/vnd.wasm.content.      layer
                              layer.v1+wasm``
============================  ===============================================  ===========

Container images (the first two) are read by applying all their layers in order
(:mod:`meshext.images.archive`), so a module added in one layer and replaced or
deleted in a later one is seen as a container runtime would see it. Istio itself reads
only the last layer; an image that Istio reads is read the same way here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from meshext.api.manifest import MANIFEST_PATH, ExtensionManifest, ManifestError, parse_manifest
from meshext.images.archive import copy_file, scan_layers
from meshext.images.client import ProgressCallback
from meshext.images.config import Limits
from meshext.images.errors import InvalidImage
from meshext.images.oci import (
    CNCF_WASM_CONFIG,
    CNCF_WASM_LAYER,
    DOCKER_LAYER_GZIP,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    WASM_ARTIFACT_CONFIG,
    WASM_ARTIFACT_LAYER,
    Descriptor,
    ImageManifest,
)
from meshext.images.source import ImageSource
from meshext.mesh.resolution import ImageFormat

ISTIO_MODULE = "plugin.wasm"
TAR_LAYERS = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)


@dataclass(frozen=True)
class ExtractedModule:
    """A module read out of an image into a work file; not checked yet."""

    image_format: ImageFormat
    path: Path
    location: str
    """Where the module was in the image, for messages (``/plugin.wasm``, a layer)."""
    manifest: ExtensionManifest | None
    manifest_yaml: str | None


def classify(manifest: ImageManifest, where: str) -> ImageFormat | None:
    """The artifact format of ``manifest``, or ``None`` for a container image."""
    types = {layer.media_type for layer in manifest.layers}
    config = manifest.config.media_type
    if config == WASM_ARTIFACT_CONFIG or WASM_ARTIFACT_LAYER in types:
        return ImageFormat.WASM_ARTIFACT
    if CNCF_WASM_CONFIG in (config, manifest.artifact_type) or CNCF_WASM_LAYER in types:
        return ImageFormat.CNCF_ARTIFACT
    if OCI_LAYER_ZSTD in types:
        raise InvalidImage(
            f"{where}: zstd-compressed layers are not supported; build the image with gzip "
            "or uncompressed layers"
        )
    unknown = sorted(types - TAR_LAYERS)
    if unknown:
        raise InvalidImage(
            f"{where}: unknown layer media type {', '.join(unknown)}; expected tar layers "
            f"(a container image) or a {WASM_ARTIFACT_LAYER} / {CNCF_WASM_LAYER} layer"
        )
    if not manifest.layers:
        raise InvalidImage(f"{where}: the image has no layers")
    return None


async def extract_module(
    source: ImageSource,
    manifest: ImageManifest,
    work: Path,
    limits: Limits,
    progress: ProgressCallback | None = None,
) -> ExtractedModule:
    """Download what holds the module and write the module to a file in ``work``."""
    artifact = classify(manifest, source.name)
    module_file = work / "module.wasm"
    if artifact is not None:
        layer = _artifact_layer(manifest, artifact, source.name)
        with module_file.open("wb") as sink:
            await source.blob(layer, sink, limit=limits.module, progress=progress)
        return ExtractedModule(artifact, module_file, f"layer {layer.digest}", None, None)

    layer_files: list[Path] = []
    for number, layer in enumerate(manifest.layers):
        path = work / f"layer-{number}"
        with path.open("wb") as sink:
            await source.blob(layer, sink, limit=limits.layer, progress=progress)
        layer_files.append(path)
    return await asyncio.to_thread(_read_container_image, layer_files, module_file, limits)


def _artifact_layer(manifest: ImageManifest, artifact: ImageFormat, where: str) -> Descriptor:
    if artifact is ImageFormat.WASM_ARTIFACT:
        layers = [d for d in manifest.layers if d.media_type == WASM_ARTIFACT_LAYER]
        if len(layers) != 1:
            raise InvalidImage(
                f"{where}: a wasm artifact needs exactly one {WASM_ARTIFACT_LAYER} layer, "
                f"found {len(layers)}"
            )
        return layers[0]
    if len(manifest.layers) != 1 or manifest.layers[0].media_type != CNCF_WASM_LAYER:
        found = ", ".join(d.media_type for d in manifest.layers) or "no layers"
        raise InvalidImage(
            f"{where}: a CNCF wasm artifact has exactly one {CNCF_WASM_LAYER} layer (found {found})"
        )
    return manifest.layers[0]


def _read_container_image(layers: list[Path], module_file: Path, limits: Limits) -> ExtractedModule:
    scan = scan_layers(layers, limits, keep=frozenset({MANIFEST_PATH}))
    manifest: ExtensionManifest | None = None
    manifest_yaml: str | None = None
    if MANIFEST_PATH in scan.small:
        raw = scan.small[MANIFEST_PATH]
        try:
            manifest = parse_manifest(raw, f"/{MANIFEST_PATH}")
        except ManifestError as exc:
            raise InvalidImage(str(exc)) from exc
        manifest_yaml = raw.decode()
        module_path = manifest.module_path
        image_format = ImageFormat.MAISTRA
        if module_path not in scan.files:
            raise InvalidImage(f"no module at /{module_path} named by manifest.yaml")
    elif ISTIO_MODULE in scan.files:
        module_path = ISTIO_MODULE
        image_format = ImageFormat.ISTIO_COMPAT
    else:
        raise InvalidImage(
            "no module found: the image has neither /manifest.yaml (Maistra format) nor "
            "/plugin.wasm (Istio format)"
        )
    number = scan.files[module_path]
    with module_file.open("wb") as sink:
        copy_file(layers[number], number, module_path, sink, limits)
    return ExtractedModule(image_format, module_file, f"/{module_path}", manifest, manifest_yaml)
