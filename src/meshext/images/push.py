"""Copying an image from an OCI image layout to a registry.

Blobs go first (skipped when the registry has them), then child manifests of an
index, then the top manifest under the destination tag, so the registry never holds
a manifest whose content is missing. The registry checks every upload's digest.
"""

from __future__ import annotations

from pathlib import Path

from meshext.images.client import Progress, RegistryClient
from meshext.images.config import Limits
from meshext.images.errors import InvalidImage
from meshext.images.oci import Descriptor, ImageIndex, ImageManifest, digest_hex, parse_document
from meshext.images.source import LayoutSource


async def push_layout(
    layout: Path,
    reference: str,
    client: RegistryClient,
    *,
    repository: str,
    tag: str,
    limits: Limits,
    progress: Progress | None = None,
) -> str:
    """Push the image ``reference`` (tag, digest, or '' for the only one) of ``layout``.

    Returns the digest of the manifest stored under ``tag``.
    """
    source = LayoutSource(layout, limits)
    top = await source.manifest(reference)
    document = parse_document(top.data, top.media_type, source.name)
    manifests: list[tuple[Descriptor, bytes, ImageManifest]] = []
    if isinstance(document, ImageIndex):
        for entry in document.manifests:
            child = await source.manifest(entry.digest)
            parsed = parse_document(child.data, entry.media_type, source.name)
            if not isinstance(parsed, ImageManifest):
                raise InvalidImage(f"{source.name}: nested indexes cannot be pushed")
            manifests.append((entry, child.data, parsed))
    else:
        manifests.append(
            (Descriptor(document.media_type, top.digest, len(top.data)), top.data, document)
        )
    blobs: dict[str, Descriptor] = {}
    for _, _, manifest in manifests:
        for blob in (manifest.config, *manifest.layers):
            blobs[blob.digest] = blob
    if progress is not None:
        progress.expect(sum(blob.size for blob in blobs.values()))
    for blob in blobs.values():
        path = layout / "blobs" / "sha256" / digest_hex(blob.digest)
        if not path.is_file():
            raise InvalidImage(f"{source.name}: blob {blob.digest} is missing")
        await client.push_blob(
            repository, blob, path, progress=progress.advance if progress is not None else None
        )
    if isinstance(document, ImageIndex):
        for entry, data, manifest in manifests:
            await client.push_manifest(repository, entry.digest, data, manifest.media_type)
    return await client.push_manifest(repository, tag, top.data, document.media_type)
