"""Finding the cosign signatures of an image digest in its repository.

Two places are looked at, both within the image's own repository and with the
extension's own credentials:

* the tag convention: the signature manifest is tagged ``sha256-<hex>.sig``
  (``cosign sign`` by default);
* OCI 1.1 referrers: manifests whose ``subject`` is the image and whose
  ``artifactType`` is cosign's signature type (``cosign sign
  --registry-referrers-mode=oci-1-1``). They are listed by the referrers API
  (``GET /v2/<name>/referrers/<digest>``) or, on registries without it (a 404, as
  from distribution 2.8), by the fallback index tagged ``sha256-<hex>``.

A signature manifest contributes each layer of the simple-signing media type that
carries a signature annotation; payloads are read through the same verified,
size-limited blob path as image layers. Nothing found here is trusted: the
verdict is :func:`meshext.images.signatures.judge`'s.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

from meshext.images.errors import ImageError, InvalidImage, NotFound
from meshext.images.oci import ImageManifest, digest_hex, parse_document
from meshext.images.signatures import (
    COSIGN_SIGNATURE_ARTIFACT,
    MAX_PAYLOAD,
    MAX_SIGNATURES,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    FoundSignature,
)
from meshext.images.source import ImageSource

Referrers = Callable[[str], Awaitable[bytes | None]]
"""The referrers index of a digest, or ``None`` where the registry has no such API."""


def signature_tag(digest: str) -> str:
    return f"sha256-{digest_hex(digest)}.sig"


def referrers_tag(digest: str) -> str:
    return f"sha256-{digest_hex(digest)}"


def places(digest: str, has_referrers_api: bool) -> str:
    """Where :func:`find_signatures` looks, for messages."""
    api = "the referrers API, then " if has_referrers_api else ""
    return f"tag {signature_tag(digest)}, {api}referrers tag {referrers_tag(digest)}"


async def find_signatures(
    source: ImageSource, digest: str, referrers: Referrers | None
) -> tuple[tuple[FoundSignature, ...], tuple[str, ...]]:
    """Every cosign signature layer attached to ``digest`` (at most ``MAX_SIGNATURES``),
    and what went wrong looking in each place that could not be read.

    A place that fails (a malformed manifest, an oversized payload, a registry
    refusing the referrers API) does not hide what the other places hold; only a
    transient registry failure is raised, to be retried.
    """
    found: list[FoundSignature] = []
    problems: list[str] = []
    tag = signature_tag(digest)
    try:
        manifest = await _manifest_or_none(source, tag)
        if manifest is not None:
            found.extend(await _layers(source, manifest, f"tag {tag}"))
    except ImageError as exc:
        if exc.retryable:
            raise
        problems.append(f"tag {tag}: {exc}")
    via = "referrers API"
    try:
        index = await referrers(digest) if referrers is not None else None
        if index is None:
            via = f"referrers tag {referrers_tag(digest)}"
            index = await _raw_manifest_or_none(source, referrers_tag(digest))
        if index is not None:
            for entry in _signature_entries(index, digest, via)[:MAX_SIGNATURES]:
                document = parse_document((await source.manifest(entry)).data, "", f"{via} {entry}")
                if isinstance(document, ImageManifest):
                    found.extend(await _layers(source, document, f"{via} {entry}"))
    except ImageError as exc:
        if exc.retryable:
            raise
        problems.append(f"{via}: {exc}")
    return tuple(found[:MAX_SIGNATURES]), tuple(problems)


async def _raw_manifest_or_none(source: ImageSource, tag: str) -> bytes | None:
    try:
        return (await source.manifest(tag)).data
    except NotFound:
        return None


async def _manifest_or_none(source: ImageSource, tag: str) -> ImageManifest | None:
    data = await _raw_manifest_or_none(source, tag)
    if data is None:
        return None
    document = parse_document(data, "", f"{source.name} {tag}")
    if not isinstance(document, ImageManifest):
        raise InvalidImage(f"{source.name}: {tag} is not a signature manifest")
    return document


async def _layers(source: ImageSource, manifest: ImageManifest, where: str) -> list[FoundSignature]:
    found: list[FoundSignature] = []
    for number, layer in enumerate(manifest.layers[:MAX_SIGNATURES], start=1):
        signature = layer.annotations.get(SIGNATURE_ANNOTATION)
        if layer.media_type != SIMPLE_SIGNING or not signature:
            continue
        sink = io.BytesIO()
        await source.blob(layer, sink, limit=MAX_PAYLOAD)
        label = where if len(manifest.layers) == 1 else f"{where} layer {number}"
        found.append(FoundSignature(sink.getvalue(), signature, label))
    return found


def _signature_entries(index: bytes, digest: str, where: str) -> list[str]:
    """Digests of the cosign signature manifests an index lists."""
    try:
        document: Any = json.loads(index)
        entries = document.get("manifests") or []
    except (UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise InvalidImage(f"{where} of {digest}: not an image index") from exc
    if not isinstance(entries, list):
        raise InvalidImage(f"{where} of {digest}: 'manifests' is not a list")
    wanted: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("artifactType") != COSIGN_SIGNATURE_ARTIFACT:
            continue
        entry_digest = entry.get("digest")
        if isinstance(entry_digest, str):
            digest_hex(entry_digest)
            wanted.append(entry_digest)
    return wanted
