"""Where image documents and blobs come from: a registry or an OCI image layout.

Both sources hand out the same things, verified the same way: manifests whose bytes
hash to their digest, and blobs streamed into a caller's file while being hashed. The
format readers and the puller see only :class:`ImageSource`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO, Protocol

from meshext.images.client import FetchedManifest, ProgressCallback, RegistryClient
from meshext.images.config import Limits
from meshext.images.errors import DigestMismatch, InvalidImage, NotFound, SizeLimitExceeded
from meshext.images.local import open_regular, read_regular
from meshext.images.oci import (
    OCI_INDEX,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageIndex,
    digest_hex,
    parse_document,
    sha256_digest,
)

_READ_CHUNK = 1024 * 1024


class ImageSource(Protocol):
    """Verified access to one image's documents and blobs."""

    @property
    def name(self) -> str:
        """The image as users wrote it, for messages."""
        ...

    async def manifest(self, reference: str) -> FetchedManifest:
        """The manifest or index named by a tag or a digest."""
        ...

    async def manifest_digest(self, reference: str) -> str:
        """The digest ``reference`` names now (cheaper than fetching the manifest)."""
        ...

    async def blob(
        self,
        descriptor: Descriptor,
        sink: BinaryIO,
        *,
        limit: int,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Write the blob into ``sink``; raises unless size and digest match."""
        ...


class RegistrySource:
    """One repository of a registry, through a :class:`RegistryClient`."""

    def __init__(self, client: RegistryClient, repository: str, name: str) -> None:
        self._client = client
        self._repository = repository
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def manifest(self, reference: str) -> FetchedManifest:
        return await self._client.get_manifest(self._repository, reference)

    async def manifest_digest(self, reference: str) -> str:
        return await self._client.manifest_digest(self._repository, reference)

    async def blob(
        self,
        descriptor: Descriptor,
        sink: BinaryIO,
        *,
        limit: int,
        progress: ProgressCallback | None = None,
    ) -> None:
        await self._client.fetch_blob(
            self._repository, descriptor, sink, limit=limit, progress=progress
        )


class LayoutSource:
    """An OCI image layout folder: ``oci-layout``, ``index.json``, ``blobs/sha256/*``.

    A tag is looked up through the ``org.opencontainers.image.ref.name`` annotation of
    ``index.json``; the empty reference means the layout's only image. Every blob is
    hashed as it is read: a layout is as untrusted as a registry.
    """

    def __init__(self, path: Path, limits: Limits) -> None:
        self._path = path
        self._limits = limits

    @property
    def name(self) -> str:
        return f"oci-layout:{self._path}"

    async def manifest(self, reference: str) -> FetchedManifest:
        descriptor = self._lookup(reference)
        data = self._read_verified(descriptor, self._limits.manifest)
        return FetchedManifest(descriptor.digest, descriptor.media_type, data)

    async def manifest_digest(self, reference: str) -> str:
        return self._lookup(reference).digest

    async def blob(
        self,
        descriptor: Descriptor,
        sink: BinaryIO,
        *,
        limit: int,
        progress: ProgressCallback | None = None,
    ) -> None:
        what = f"blob {descriptor.digest} in {self.name}"
        _check_limit(what, descriptor, limit)
        hasher = hashlib.sha256()
        received = 0
        with self._open(descriptor) as stream:
            while chunk := stream.read(_READ_CHUNK):
                received += len(chunk)
                if received > descriptor.size:
                    raise DigestMismatch(f"{what} is larger than its descriptor declares")
                hasher.update(chunk)
                sink.write(chunk)
                if progress:
                    progress(len(chunk))
        _check(what, descriptor, received, "sha256:" + hasher.hexdigest())

    def index(self) -> ImageIndex:
        """The layout's ``index.json``."""
        path = self._path / "index.json"
        try:
            data = read_regular(path, self._limits.manifest, self.name)
        except NotFound as exc:
            raise NotFound(f"{self.name}: no index.json; is this an OCI image layout?") from exc
        except OSError as exc:
            raise InvalidImage(f"{self.name}: cannot read index.json: {exc.strerror}") from exc
        document = parse_document(data, OCI_INDEX, f"{self.name}/index.json")
        if not isinstance(document, ImageIndex):
            raise InvalidImage(f"{self.name}/index.json is not an image index")
        return document

    def _lookup(self, reference: str) -> Descriptor:
        entries = self.index().manifests
        if reference.startswith("sha256:"):
            for entry in entries:
                if entry.digest == reference:
                    return entry
            blob = self._blob_path(reference)
            if not blob.is_file():
                raise NotFound(f"{self.name}: no manifest {reference}")
            return Descriptor("", reference, blob.stat().st_size)
        if not reference:
            if len(entries) == 1:
                return entries[0]
            raise InvalidImage(
                f"{self.name} holds {len(entries)} images; name one with :<tag> or @<digest>"
            )
        matches = [e for e in entries if e.annotations.get(REF_NAME_ANNOTATION) == reference]
        if not matches:
            tags = sorted(
                {
                    e.annotations[REF_NAME_ANNOTATION]
                    for e in entries
                    if REF_NAME_ANNOTATION in e.annotations
                }
            )
            raise NotFound(f"{self.name}: no tag {reference!r} (tags: {', '.join(tags) or 'none'})")
        return matches[-1]

    def _blob_path(self, digest: str) -> Path:
        return self._path / "blobs" / "sha256" / digest_hex(digest)

    def _open(self, descriptor: Descriptor) -> BinaryIO:
        try:
            return open_regular(self._blob_path(descriptor.digest), self.name)
        except NotFound as exc:
            raise NotFound(f"{self.name}: blob {descriptor.digest} is missing") from exc

    def _read_verified(self, descriptor: Descriptor, limit: int) -> bytes:
        what = f"{descriptor.digest} in {self.name}"
        _check_limit(what, descriptor, limit)
        with self._open(descriptor) as stream:
            data = stream.read(descriptor.size + 1)
        _check(what, descriptor, len(data), sha256_digest(data))
        return data


def _check_limit(what: str, descriptor: Descriptor, limit: int) -> None:
    if descriptor.size > limit:
        raise SizeLimitExceeded(
            f"{what} is {descriptor.size} bytes, over the limit of {limit} bytes"
        )


def _check(what: str, descriptor: Descriptor, size: int, digest: str) -> None:
    if size != descriptor.size:
        raise DigestMismatch(f"{what}: {size} bytes, the descriptor declares {descriptor.size}")
    if digest != descriptor.digest:
        raise DigestMismatch(f"{what}: the content hashes to {digest}")
