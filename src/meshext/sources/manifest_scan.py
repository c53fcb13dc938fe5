"""Find the manifests below a folder and read them without trusting what the names say.

A name ending in ``.yaml`` may be a symbolic link in a loop, a link to nothing, a FIFO
(opening it for reading would block until a writer comes), a device (``/dev/zero``
never ends) or a folder. Only regular files (directly or through a symbolic link) are
read; every other entry with a manifest name is reported, never skipped silently.
Files are opened non-blocking, checked with ``fstat`` on the open descriptor (so a
swap between the check and the read does not matter), and read up to a bound.
Folders are walked without following symbolic links to folders, so a link cycle
cannot make the walk endless. Hidden entries (a name starting with ``.``) are left
out, as editors and ``git`` keep their own files there.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ScanProblem:
    """An entry named like a manifest that is not a readable regular file."""

    path: Path
    message: str


@dataclass(frozen=True)
class Scan:
    files: tuple[Path, ...]
    problems: tuple[ScanProblem, ...]


class UnreadableManifest(OSError):
    """A manifest file that could not be read within its bounds."""


def scan_manifests(root: Path) -> Scan:
    """Every manifest below ``root`` (or ``root`` itself), in a stable order."""
    files: list[Path] = []
    problems: list[ScanProblem] = []
    if not root.is_dir():
        candidates = [root]
    else:
        candidates = []
        for folder, subfolders, names in os.walk(root, followlinks=False):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            base = Path(folder)
            for name in subfolders:
                if name.endswith(YAML_SUFFIXES) and (base / name).is_symlink():
                    candidates.append(base / name)  # a link to a folder, or a broken link
            candidates.extend(
                base / n for n in names if n.endswith(YAML_SUFFIXES) and not n.startswith(".")
            )
    for path in sorted(candidates):
        problem = _not_a_regular_file(path)
        if problem is None:
            files.append(path)
        else:
            problems.append(ScanProblem(path, problem))
    return Scan(tuple(files), tuple(problems))


def _not_a_regular_file(path: Path) -> str | None:
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link that loops; not read"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"a symbolic link to {os.readlink(path)!r}, which does not exist; not read"
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISREG(info.st_mode):
        return None
    return f"not a regular file ({_file_type(info.st_mode)}); not read"


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def read_manifest(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, refusing anything else or more than
    ``max_bytes`` (it is never read past that)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableManifest(f"cannot be opened: {exc.strerror}") from exc
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableManifest(f"not a regular file ({_file_type(info.st_mode)}); not read")
        if info.st_size > max_bytes:
            raise UnreadableManifest(
                f"{info.st_size} bytes is more than the limit of {max_bytes} bytes; not read"
            )
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise UnreadableManifest(f"more than the limit of {max_bytes} bytes; not read")
        return data
    except OSError as exc:
        if isinstance(exc, UnreadableManifest):
            raise
        raise UnreadableManifest(f"cannot be read: {exc.strerror}") from exc
    finally:
        os.close(descriptor)
