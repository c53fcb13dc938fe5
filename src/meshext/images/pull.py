"""Pulling an image into the module cache: documents, platform, format, checks, commit.

:class:`Puller` is the one path by which a module enters the cache, for registry
images, OCI layouts and plain files alike. The module is written to a work folder,
checked (:mod:`meshext.images.checks`), and only then renamed into the cache; on any
failure the work folder is removed and the cache is as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from meshext.images.cache import ImageRecord, ModuleCache
from meshext.images.checks import ModuleChecker
from meshext.images.client import FetchedManifest, Progress
from meshext.images.config import Limits
from meshext.images.errors import InvalidImage
from meshext.images.formats import classify, extract_module
from meshext.images.local import copy_regular
from meshext.images.oci import ImageIndex, ImageManifest, parse_document, select_platform
from meshext.images.source import ImageSource
from meshext.mesh.resolution import ImageFormat

_MAX_INDEX_DEPTH = 2


class Puller:
    """Pulls into one cache; concurrent pulls of one image digest download once."""

    def __init__(self, cache: ModuleCache, limits: Limits) -> None:
        self._cache = cache
        self._limits = limits
        self._checker = ModuleChecker(limits)

    async def pull(
        self,
        source: ImageSource,
        top: FetchedManifest,
        identity: str,
        progress: Progress | None = None,
    ) -> ImageRecord:
        """The cache record of ``top``, downloading and checking it unless cached.

        ``identity`` (a credential identity) is recorded as having access.
        """

        async def work() -> ImageRecord:
            record = self._cache.image(top.digest)
            if record is None:
                record = await self._download(source, top, progress)
            return record

        record = await self._cache.single_flight(f"image:{top.digest}", work)
        if not self._cache.is_granted(record, identity):
            self._cache.grant(top.digest, identity)
        return record

    async def commit_download(self, path: Path, sha256: str, url: str) -> ImageRecord:
        """A module downloaded (and its sha256 verified) into a work folder: checked, cached."""
        return await self._commit_plain(
            path, sha256, what=f"the module at {url}", image_format=ImageFormat.HTTP_MODULE
        )

    async def load_file(self, path: Path) -> ImageRecord:
        """A plain ``.wasm`` file: copied, checked and cached under its own hash."""
        with self._cache.work_folder() as work:
            copy = work / "module.wasm"
            copy_regular(path, copy, self._limits.module, "module file")
            return await self._commit_plain(
                copy,
                _file_sha256(copy),
                what=f"module file {path}",
                image_format=ImageFormat.LOCAL_FILE,
            )

    async def _commit_plain(
        self, module: Path, sha256: str, *, what: str, image_format: ImageFormat
    ) -> ImageRecord:
        """A plain ``.wasm`` (no image around it), cached under its own hash."""
        digest = f"sha256:{sha256}"
        cached = self._cache.image(digest)
        if cached is not None:
            return cached
        return await self._commit(
            module,
            what=what,
            digest=digest,
            image_digest=None,
            image_format=image_format,
            manifest_yaml=None,
        )

    async def _download(
        self, source: ImageSource, top: FetchedManifest, progress: Progress | None
    ) -> ImageRecord:
        manifest, image_digest = await self.image_manifest(source, top)
        if progress is not None:
            if classify(manifest, source.name) is None:
                progress.expect(sum(layer.size for layer in manifest.layers))
            else:
                progress.expect(max((layer.size for layer in manifest.layers), default=0))
        with self._cache.work_folder() as work:
            extracted = await extract_module(
                source,
                manifest,
                work,
                self._limits,
                progress.advance if progress is not None else None,
            )
            return await self._commit(
                extracted.path,
                what=f"the module at {extracted.location} of {source.name}",
                digest=top.digest,
                image_digest=image_digest,
                image_format=extracted.image_format,
                manifest_yaml=extracted.manifest_yaml,
            )

    async def image_manifest(
        self, source: ImageSource, top: FetchedManifest
    ) -> tuple[ImageManifest, str]:
        """The image manifest ``top`` stands for (choosing from indexes) and its digest."""
        current = top
        expected_type = top.media_type
        for _ in range(_MAX_INDEX_DEPTH + 1):
            document = parse_document(current.data, expected_type, source.name)
            if isinstance(document, ImageManifest):
                return document, current.digest
            assert isinstance(document, ImageIndex)
            entry = select_platform(document, source.name)
            current = await source.manifest(entry.digest)
            expected_type = entry.media_type or current.media_type
        raise InvalidImage(f"{source.name}: image indexes nested more than {_MAX_INDEX_DEPTH} deep")

    async def _commit(
        self,
        module: Path,
        *,
        what: str,
        digest: str,
        image_digest: str | None,
        image_format: ImageFormat,
        manifest_yaml: str | None,
    ) -> ImageRecord:
        info = await self._checker.check(module, what)
        self._cache.commit_module(module, info.sha256)
        record = ImageRecord(
            digest=digest,
            image_digest=image_digest,
            image_format=image_format,
            module_sha256=info.sha256,
            size=info.size,
            abi_versions=info.abi_versions,
            manifest_yaml=manifest_yaml,
        )
        self._cache.store_image(record)
        self._cache.evict(keep=frozenset({info.sha256}))
        return record


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            hasher.update(chunk)
    return hasher.hexdigest()
