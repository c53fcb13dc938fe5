"""The module cache: content-addressed modules on disk plus small records about images.

Layout under the cache root::

    blobs/sha256/<hex>     verified modules, named by the sha256 of their bytes
    images/<hex>.json      what an image digest resolved to (format, module, manifest.yaml)
    tags/<hex>.json        what a tag pointed to when last asked (hex = sha256 of the name)
    locks/<hex>.lock       cross-process locks (flock) for single-flight pulls
    tmp/                   work folders of pulls in progress
    key                    random key that makes credential fingerprints cache-specific

Every file is written to ``tmp/`` first, fsynced and renamed into place, so a crash
leaves either the old entry or the new one, never a torn one; modules are committed
only after every check passed, so a failed pull leaves nothing behind but its work
folder, which is removed.

Concurrency: :meth:`ModuleCache.single_flight` runs one pull per key in this process
(later callers await the first one's task) and holds an flock on the key's lock file
so other processes sharing the folder wait and then find the finished entry.

Eviction: with ``max_bytes`` set, modules are removed least-recently-used first
(a module's mtime is refreshed whenever a resolve uses it, so the order survives
restarts) until the cache fits, skipping modules some extension uses now
(:meth:`ModuleCache.use`). Image and tag records pointing at an evicted module are
removed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from meshext.api.manifest import ExtensionManifest, parse_manifest
from meshext.images.errors import ImageError
from meshext.images.files import atomic_write, fsync_dir, fsync_file
from meshext.mesh.resolution import ImageFormat, ResolvedModule

T = TypeVar("T")

_HEX = re.compile(r"^[0-9a-f]{64}$")
_STALE_WORK_SECONDS = 3600.0


class CacheError(ImageError):
    """The cache folder cannot be read or written."""

    retryable = True


def cache_write_error(cache: ModuleCache, exc: OSError) -> CacheError:
    """A file-system failure while filling ``cache``, said so a user can fix it."""
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "meshext may not write there",
        errno.EPERM: "meshext may not write there",
    }.get(exc.errno or 0, "")
    return CacheError(
        f"the module cache in {cache.root} cannot be written ({reason}"
        + (f": {hint}" if hint else "")
        + "); free space or give --cache-dir a writable folder"
    )


@dataclass(frozen=True)
class ImageRecord:
    """What one image digest resolved to; stored as ``images/<hex>.json``."""

    digest: str
    """The digest the reference named: a manifest or an index."""
    image_digest: str | None
    """The manifest the module came from (the index entry chosen, or ``digest``)."""
    image_format: ImageFormat
    module_sha256: str
    size: int
    abi_versions: tuple[str, ...]
    manifest_yaml: str | None = None
    granted: frozenset[str] = field(default_factory=frozenset)
    """Keyed fingerprints of credentials that proved access to this image."""

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "imageDigest": self.image_digest,
            "format": self.image_format.value,
            "moduleSha256": self.module_sha256,
            "size": self.size,
            "abiVersions": list(self.abi_versions),
            "manifestYaml": self.manifest_yaml,
            "granted": sorted(self.granted),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ImageRecord:
        return cls(
            digest=str(document["digest"]),
            image_digest=document.get("imageDigest"),
            image_format=ImageFormat(document["format"]),
            module_sha256=str(document["moduleSha256"]),
            size=int(document["size"]),
            abi_versions=tuple(document.get("abiVersions") or ()),
            manifest_yaml=document.get("manifestYaml"),
            granted=frozenset(document.get("granted") or ()),
        )

    def manifest(self) -> ExtensionManifest | None:
        if self.manifest_yaml is None:
            return None
        return parse_manifest(self.manifest_yaml.encode())

    def resolved(self, path: Path) -> ResolvedModule:
        return ResolvedModule(
            sha256=self.module_sha256,
            path=str(path),
            size=self.size,
            image_digest=self.image_digest,
            image_format=self.image_format,
            manifest=self.manifest(),
            abi_versions=self.abi_versions,
        )


class ModuleCache:
    """A module cache folder; safe to share between tasks and between processes."""

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._blobs = root / "blobs" / "sha256"
        self._images = root / "images"
        self._tags = root / "tags"
        self._locks = root / "locks"
        self._tmp = root / "tmp"
        try:
            for folder in (self._blobs, self._images, self._tags, self._locks, self._tmp):
                folder.mkdir(parents=True, exist_ok=True)
            self._key = self._load_key()
        except OSError as exc:
            raise CacheError(f"cannot prepare the module cache in {root}: {exc}") from exc
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._users: dict[str, str] = {}
        self._remove_stale_work()

    def __repr__(self) -> str:
        limit = f", max_bytes={self.max_bytes}" if self.max_bytes is not None else ""
        return f"ModuleCache({str(self.root)!r}{limit})"

    # -- modules ------------------------------------------------------------------------

    def path_for(self, sha256: str) -> Path | None:
        """The cached module with this sha256 (hex, or ``sha256:<hex>``), or ``None``."""
        hex_digest = sha256.removeprefix("sha256:")
        if not _HEX.match(hex_digest):
            return None
        path = self._blobs / hex_digest
        return path if path.is_file() else None

    def commit_module(self, source: Path, sha256: str) -> Path:
        """Move a verified module file into the cache under its hash."""
        target = self._blobs / sha256
        if target.is_file():
            source.unlink(missing_ok=True)
        else:
            try:
                fsync_file(source)
                source.chmod(0o644)
                os.replace(source, target)
                fsync_dir(self._blobs)
            except OSError as exc:
                raise CacheError(f"cannot store module {sha256} in {self.root}: {exc}") from exc
        self.touch(sha256)
        return target

    def touch(self, sha256: str) -> None:
        """Mark a module as used now (its place in the eviction order)."""
        with contextlib.suppress(OSError):
            os.utime(self._blobs / sha256)

    def modules(self) -> dict[str, int]:
        """Every cached module's sha256 and size."""
        found: dict[str, int] = {}
        for path in self._blobs.iterdir():
            if _HEX.match(path.name):
                with contextlib.suppress(FileNotFoundError):
                    found[path.name] = path.stat().st_size
        return found

    # -- records ------------------------------------------------------------------------

    def image(self, digest: str) -> ImageRecord | None:
        """The record of ``digest`` if its module is still cached."""
        document = _read_json(self._images / f"{_hex(digest)}.json")
        if document is None:
            return None
        try:
            record = ImageRecord.from_json(document)
        except (KeyError, ValueError, TypeError):
            return None
        return record if self.path_for(record.module_sha256) is not None else None

    def store_image(self, record: ImageRecord) -> None:
        self._write_json(self._images / f"{_hex(record.digest)}.json", record.to_json())

    def tag(self, name: str) -> str | None:
        """The digest tag ``name`` (``registry/repo:tag`` or a layout's) pointed to last."""
        document = _read_json(self._tags / f"{_name_key(name)}.json")
        if document is None or document.get("name") != name:
            return None
        digest = document.get("digest")
        return digest if isinstance(digest, str) else None

    def store_tag(self, name: str, digest: str) -> None:
        self._write_json(
            self._tags / f"{_name_key(name)}.json",
            {"name": name, "digest": digest, "checked": int(time.time())},
        )

    def fingerprint(self, identity: str) -> str:
        """A cache-keyed digest of a credential identity, safe to store."""
        return hmac.new(self._key, identity.encode(), hashlib.sha256).hexdigest()

    def is_granted(self, record: ImageRecord, identity: str) -> bool:
        return self.fingerprint(identity) in record.granted

    def grant(self, digest: str, identity: str) -> None:
        """Remember that ``identity`` proved access to image ``digest``."""
        record = self.image(digest)
        mark = self.fingerprint(identity)
        if record is not None and mark not in record.granted:
            self.store_image(replace(record, granted=record.granted | {mark}))

    # -- users and eviction -------------------------------------------------------------

    def use(self, user: str, sha256: str | None) -> None:
        """Record that ``user`` (an extension) now uses module ``sha256`` (None: nothing)."""
        if sha256 is None:
            self._users.pop(user, None)
        else:
            self._users[user] = sha256
            self.touch(sha256)

    def in_use(self) -> frozenset[str]:
        return frozenset(self._users.values())

    def evict(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Remove least-recently-used modules nobody uses until under ``max_bytes``."""
        if self.max_bytes is None:
            return []
        with self._blocking_lock("evict"):
            entries: list[tuple[float, str, int]] = []
            total = 0
            for path in self._blobs.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    entries.append((stat.st_mtime, path.name, stat.st_size))
                    total += stat.st_size
            protected = self.in_use() | keep
            removed: list[str] = []
            for _, name, size in sorted(entries):
                if total <= self.max_bytes:
                    break
                if name in protected:
                    continue
                self._remove_module(name)
                total -= size
                removed.append(name)
            return removed

    def _remove_module(self, sha256: str) -> None:
        for record_path in self._images.glob("*.json"):
            document = _read_json(record_path)
            if document is not None and document.get("moduleSha256") == sha256:
                record_path.unlink(missing_ok=True)
        (self._blobs / sha256).unlink(missing_ok=True)

    # -- work folders and locking -------------------------------------------------------

    @contextlib.contextmanager
    def work_folder(self) -> Iterator[Path]:
        """A private folder for one pull's downloads; removed afterwards, whatever happens."""
        folder = Path(tempfile.mkdtemp(prefix="pull-", dir=self._tmp))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def single_flight(
        self, key: str, work: Callable[[], Awaitable[T]], *, across_processes: bool = True
    ) -> T:
        """Run ``work`` once for ``key`` across this process's tasks (and processes).

        Tasks asking while a flight is under way await its result (or its error). A
        caller that is cancelled does not cancel the flight others wait for. With
        ``across_processes`` the flight also holds the key's lock file.
        """
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(
                self._under_lock(key, work) if across_processes else work()
            )
            self._flights[key] = flight

            def _land(done: asyncio.Future[Any], key: str = key) -> None:
                if self._flights.get(key) is done:
                    del self._flights[key]
                if not done.cancelled():
                    done.exception()

            flight.add_done_callback(_land)
        result: T = await asyncio.shield(flight)
        return result

    def lock_file(self, key: str) -> Path:
        """The file other processes flock while they work on ``key``."""
        return self._locks / f"{_name_key(key)}.lock"

    async def _under_lock(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        descriptor = os.open(self.lock_file(key), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            delay = 0.005
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise CacheError(f"cannot lock {key} in {self.root}: {exc}") from exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.2)
            return await work()
        finally:
            os.close(descriptor)

    @contextlib.contextmanager
    def _blocking_lock(self, key: str) -> Iterator[None]:
        descriptor = os.open(self.lock_file(key), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    # -- files --------------------------------------------------------------------------

    def _write_json(self, path: Path, document: dict[str, Any]) -> None:
        data = json.dumps(document, sort_keys=True, indent=1).encode()
        try:
            atomic_write(path, data, self._tmp)
        except OSError as exc:
            raise CacheError(f"cannot write {path}: {exc}") from exc

    def _load_key(self) -> bytes:
        path = self.root / "key"
        try:
            key = path.read_bytes()
            if len(key) == 32:
                return key
        except FileNotFoundError:
            pass
        key = secrets.token_bytes(32)
        with contextlib.suppress(FileExistsError):
            staged = self._tmp / f"key-{os.getpid()}-{secrets.token_hex(4)}"
            descriptor = os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(key)
                stream.flush()
                os.fsync(stream.fileno())
            try:
                os.link(staged, path)
            finally:
                staged.unlink()
        return path.read_bytes()

    def _remove_stale_work(self) -> None:
        cutoff = time.time() - _STALE_WORK_SECONDS
        for entry in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()


def _hex(digest: str) -> str:
    hex_digest = digest.removeprefix("sha256:")
    if not _HEX.match(hex_digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hex_digest


def _name_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
