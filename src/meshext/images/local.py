"""Local images (``file:`` and ``oci-layout:``): where they may be read from, and how.

A local image is a path on the control plane's host, written by whoever writes the
extension. Read without limits, ``file:/etc/shadow`` would make the control plane
read (and report on) any file it can open, ``file:/dev/zero`` would be copied until
the disk fills, and a FIFO would block the read for ever. So:

- the operator names the folders local images may come from (:class:`LocalImages`);
  a path is checked after every symbolic link in it is resolved, so a link cannot
  lead outside. With no folder named, local images are refused (Kubernetes mode
  always refuses them: a namespace's user must not read the controller's files);
- only regular files are read, opened without blocking and checked on the open
  descriptor, and never past the size limit, whatever the file claims;
- errors name the path and the reason, never the content.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from meshext.images.errors import InvalidImage, NotFound, SizeLimitExceeded


class LocalImageRefused(InvalidImage):
    """A local image outside the folders the operator allowed (or none allowed)."""


@dataclass(frozen=True)
class LocalImages:
    """The folders local images may be read from; ``None`` means anywhere (the CLI,
    run by a user on their own files); an empty tuple refuses them all."""

    roots: tuple[Path, ...] | None = None

    def check(self, path: Path, image: str) -> Path:
        """``path`` with its links resolved, if it lies below an allowed folder."""
        if self.roots is None:
            return path
        if not self.roots:
            raise LocalImageRefused(
                f"{image}: local images (file: and oci-layout:) are not allowed here; "
                "serve them from a registry, or name their folder with --local-images DIR"
            )
        resolved = Path(os.path.realpath(path))
        for root in self.roots:
            if resolved.is_relative_to(os.path.realpath(root)):
                return resolved
        allowed = ", ".join(str(r) for r in self.roots)
        raise LocalImageRefused(
            f"{image}: {path} is not below a folder local images may come from ({allowed}); "
            "name its folder with --local-images DIR"
        )


ANYWHERE = LocalImages()
NOWHERE = LocalImages(())


def open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (FIFOs, devices, sockets and
    folders are refused without blocking)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"no {what} at {path}") from exc
    except OSError as exc:
        raise InvalidImage(f"{what}: cannot open {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise InvalidImage(f"{what}: {path} is {kind}; only regular files are read")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``; more than ``limit`` is refused unread."""
    with open_regular(path, what) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise SizeLimitExceeded(f"{what}: {path} is over the limit of {limit} bytes")
    return data


def copy_regular(source: Path, target: Path, limit: int, what: str) -> None:
    """Copy the regular file ``source`` to ``target``, stopping past ``limit`` bytes."""
    copied = 0
    with open_regular(source, what) as stream, target.open("wb") as sink:
        while chunk := stream.read(1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise SizeLimitExceeded(f"{what}: {source} is over the limit of {limit} bytes")
            sink.write(chunk)
