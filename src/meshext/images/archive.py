"""Reading files out of image layers without trusting them.

A container image's filesystem is its layers applied in order. meshext never
unpacks an image to disk: it scans the layers to learn which layer last wrote each
path (honouring whiteouts: ``.wh.<name>`` deletes ``<name>`` from lower layers,
``.wh..wh..opq`` empties a directory of lower layers' content) and then reads the
one or two files it needs straight from their layer.

While scanning, every entry is checked, and the layer is refused if any entry:

* has an absolute path or a ``..`` component (it would escape the root);
* is a symbolic or hard link, a device, or a FIFO (a module is a regular file, and
  links are how extraction bugs are exploited);
* belongs to a layer that decompresses to more than ``Limits.decompressed`` bytes;
  bytes are counted as they come out of the decompressor, so a gzip bomb stops at
  the limit instead of filling memory or disk.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from meshext.images.config import Limits
from meshext.images.errors import InvalidImage, SizeLimitExceeded, UnsafeArchive

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class LayerScan:
    """What the applied layers hold: for each regular file, the layer that wrote it last."""

    files: dict[str, int] = field(default_factory=dict)
    small: dict[str, bytes] = field(default_factory=dict)
    """Contents of the files asked for by name while scanning (``manifest.yaml``)."""


def scan_layers(layers: Sequence[Path], limits: Limits, keep: frozenset[str]) -> LayerScan:
    """Apply ``layers`` in order; keep the content of paths in ``keep`` (small files)."""
    scan = LayerScan()
    for number, layer in enumerate(layers):
        for member, path, stream in _members(layer, number, limits):
            name = PurePosixPath(path).name
            parent = str(PurePosixPath(path).parent)
            if name == OPAQUE_WHITEOUT:
                _delete_lower(scan, "" if parent == "." else parent, number, itself=False)
            elif name.startswith(WHITEOUT_PREFIX):
                target = name.removeprefix(WHITEOUT_PREFIX)
                _delete_lower(scan, target if parent == "." else f"{parent}/{target}", number)
            elif member.isreg():
                scan.files[path] = number
                if path in keep:
                    scan.small[path] = _read_member(stream, member, limits.manifest_yaml, path)
                else:
                    scan.small.pop(path, None)
    return scan


def copy_file(layer: Path, number: int, path: str, sink: BinaryIO, limits: Limits) -> int:
    """Copy the last ``path`` entry of ``layer`` into ``sink``; returns its size."""
    found = -1
    for member, name, stream in _members(layer, number, limits):
        if name != path or not member.isreg():
            continue
        if member.size > limits.module:
            raise SizeLimitExceeded(
                f"/{path} is {member.size} bytes, over the module limit of {limits.module} bytes"
            )
        source = stream.extractfile(member)
        if source is None:
            continue
        sink.seek(0)
        sink.truncate()
        found = 0
        try:
            while chunk := source.read(1024 * 1024):
                sink.write(chunk)
                found += len(chunk)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise InvalidImage(f"/{path} in layer {number + 1} is cut short: {exc}") from exc
    if found < 0:
        raise InvalidImage(f"/{path} vanished from layer {number + 1}")
    return found


def _delete_lower(scan: LayerScan, prefix: str, number: int, *, itself: bool = True) -> None:
    for path in [p for p, layer in scan.files.items() if layer < number]:
        if (itself and path == prefix) or not prefix or path.startswith(prefix + "/"):
            del scan.files[path]
            scan.small.pop(path, None)


def _read_member(stream: tarfile.TarFile, member: tarfile.TarInfo, limit: int, path: str) -> bytes:
    if member.size > limit:
        raise SizeLimitExceeded(f"/{path} is {member.size} bytes, over the limit of {limit} bytes")
    source = stream.extractfile(member)
    try:
        return source.read() if source is not None else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InvalidImage(f"/{path} is cut short: {exc}") from exc


def _members(
    layer: Path, number: int, limits: Limits
) -> Iterator[tuple[tarfile.TarInfo, str, tarfile.TarFile]]:
    where = f"layer {number + 1}"
    with _open_layer(layer, limits.decompressed, where) as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|") as stream:
                while (member := _next_member(stream)) is not None:
                    path = _checked_path(member, where)
                    if path is not None:
                        yield member, path, stream
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidImage(f"{where} is not a readable tar archive: {exc}") from exc


def _next_member(stream: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next entry; ``None`` at the end of the archive.

    Some writers (umoci 0.4's ``insert`` among them) end a layer right after the last
    entry's data, without padding or the two zero blocks. That is read as the end of
    the archive; a member whose data is cut short still fails when its data is read.
    """
    try:
        return stream.next()
    except tarfile.ReadError as exc:
        if str(exc) == "unexpected end of data":
            return None
        raise


def _checked_path(member: tarfile.TarInfo, where: str) -> str | None:
    raw = member.name
    if raw.startswith("/"):
        raise UnsafeArchive(f"{where} holds an absolute path {raw!r}; refusing the image")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if ".." in parts:
        raise UnsafeArchive(f"{where} holds a path that escapes the root: {raw!r}")
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        raise UnsafeArchive(
            f"{where} holds a {kind} {raw!r} -> {member.linkname!r}; links are refused"
        )
    if not (member.isreg() or member.isdir()):
        raise UnsafeArchive(f"{where} holds a device or FIFO {raw!r}; refusing the image")
    return "/".join(parts) if parts else None


class _BoundedReader(io.RawIOBase):
    """Counts the bytes read through it and stops past ``limit``."""

    def __init__(self, inner: BinaryIO, limit: int, where: str) -> None:
        self._inner = inner
        self._limit = limit
        self._where = where
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        self.count += len(data)
        if self.count > self._limit:
            raise UnsafeArchive(
                f"{self._where} decompresses to more than {self._limit} bytes; refusing a "
                "possible decompression bomb"
            )
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def _open_layer(layer: Path, limit: int, where: str) -> Iterator[BinaryIO]:
    with layer.open("rb") as compressed:
        gzipped = compressed.read(2) == _GZIP_MAGIC
        compressed.seek(0)
        inner: BinaryIO = (
            gzip.GzipFile(fileobj=compressed, mode="rb") if gzipped else compressed  # type: ignore[assignment]
        )
        try:
            yield io.BufferedReader(_BoundedReader(inner, limit, where), 1024 * 1024)
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidImage(f"{where} cannot be decompressed: {exc}") from exc
        finally:
            if gzipped:
                inner.close()
