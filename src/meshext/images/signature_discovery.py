"""Finding the cosign signatures and Sigstore bundles of an image digest.

Two places are looked at, both within the image's own repository and with the
extension's own credentials:

* the tag convention: the signature manifest is tagged ``sha256-<hex>.sig``
  (``cosign sign`` by default);
* OCI 1.1 referrers: manifests whose ``subject`` is the image, listed by the
  referrers API (``GET /v2/<name>/referrers/<digest>``) or, on registries without
  it (a 404, as from distribution 2.8), by the fallback index tagged
  ``sha256-<hex>``. Cosign signature manifests (``cosign sign
  --registry-referrers-mode=oci-1-1``) and Sigstore bundles (``cosign sign
  --new-bundle-format``) are both found there.

At most ``MAX_SIGNATURES`` referrer entries are read. Entries whose
``artifactType`` is neither cosign's nor a bundle's are skipped without a request
(registries that fill ``artifactType`` from the config media type report a bundle
as ``application/vnd.oci.empty.v1+json``, which is read too). Each referrer
manifest read must name the image as its ``subject``, whatever the index claims.

A cosign signature manifest contributes each layer of the simple-signing media type
that carries a signature annotation; a bundle manifest contributes its bundle layer.
Payloads are read through the same verified, size-limited blob path as image
layers. Nothing found here is trusted: the verdicts are
:func:`meshext.images.signatures.judge`'s and
:func:`meshext.images.sigstore_bundle.judge_bundles`'.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from meshext.images.sigstore_bundle import (
    BUNDLE_ARTIFACT,
    BUNDLE_MEDIA_TYPES,
    MAX_BUNDLE,
    FoundBundle,
)
from meshext.images.source import ImageSource

EMPTY_ARTIFACT = "application/vnd.oci.empty.v1+json"
_READ_ARTIFACTS = frozenset({COSIGN_SIGNATURE_ARTIFACT, BUNDLE_ARTIFACT, EMPTY_ARTIFACT, ""})

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


@dataclass(frozen=True)
class Discovery:
    """What was found for one digest, and the places that could not be read."""

    signatures: tuple[FoundSignature, ...] = ()
    bundles: tuple[FoundBundle, ...] = ()
    problems: tuple[str, ...] = ()


async def find_signatures(
    source: ImageSource, digest: str, referrers: Referrers | None
) -> Discovery:
    """Every cosign signature layer and Sigstore bundle attached to ``digest`` (at most
    ``MAX_SIGNATURES`` of each), and what went wrong in each place that could not be
    read.

    A place that fails (a malformed manifest, an oversized payload, a registry
    refusing the referrers API) does not hide what the other places hold; only a
    transient registry failure is raised, to be retried.
    """
    found: list[FoundSignature] = []
    bundles: list[FoundBundle] = []
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
            for entry in _referrer_entries(index, digest, via):
                where = f"{via} {entry}"
                try:
                    data = (await source.manifest(entry)).data
                    if _subject(data) != digest:
                        problems.append(f"{where}: its subject is not this image")
                        continue
                    document = parse_document(data, "", where)
                    if isinstance(document, ImageManifest):
                        found.extend(await _layers(source, document, where))
                        bundles.extend(await _bundles(source, document, where))
                except ImageError as exc:
                    if exc.retryable:
                        raise
                    problems.append(f"{where}: {exc}")
    except ImageError as exc:
        if exc.retryable:
            raise
        problems.append(f"{via}: {exc}")
    return Discovery(
        tuple(found[:MAX_SIGNATURES]), tuple(bundles[:MAX_SIGNATURES]), tuple(problems)
    )


def _subject(manifest: bytes) -> str | None:
    """The digest a referrer manifest's ``subject`` names, if any."""
    try:
        document: Any = json.loads(manifest)
        subject = document.get("subject") or {}
        value = subject.get("digest")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


async def _bundles(source: ImageSource, manifest: ImageManifest, where: str) -> list[FoundBundle]:
    if manifest.artifact_type and manifest.artifact_type not in BUNDLE_MEDIA_TYPES:
        return []
    found: list[FoundBundle] = []
    for layer in manifest.layers[:MAX_SIGNATURES]:
        if layer.media_type not in BUNDLE_MEDIA_TYPES:
            continue
        sink = io.BytesIO()
        await source.blob(layer, sink, limit=MAX_BUNDLE)
        found.append(FoundBundle(sink.getvalue(), where))
    return found


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


def _referrer_entries(index: bytes, digest: str, where: str) -> list[str]:
    """Digests of the first ``MAX_SIGNATURES`` entries of a referrers index that may be
    cosign signatures or bundles."""
    try:
        document: Any = json.loads(index)
        entries = document.get("manifests") or []
    except (UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise InvalidImage(f"{where} of {digest}: not an image index") from exc
    if not isinstance(entries, list):
        raise InvalidImage(f"{where} of {digest}: 'manifests' is not a list")
    wanted: list[str] = []
    for entry in entries[:MAX_SIGNATURES]:
        if not isinstance(entry, dict) or entry.get("artifactType", "") not in _READ_ARTIFACTS:
            continue
        entry_digest = entry.get("digest")
        if isinstance(entry_digest, str):
            digest_hex(entry_digest)
            wanted.append(entry_digest)
    return wanted
