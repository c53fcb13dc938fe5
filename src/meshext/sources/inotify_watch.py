"""Changes below a folder, reported by Linux inotify straight to the event loop.

Why meshext watches with inotify itself instead of through watchfiles: watchfiles'
watcher thread wakes every ``step`` milliseconds even when nothing changes, and hands
a burst of events over only once ``step`` ms have passed without a new one. With
``step=10`` an edit reached the control plane 10-20 ms late; a smaller step shortens
that but costs CPU while idle (measured: step 10 used 0.004 s of CPU per second, step
2 used 0.010, step 1 used 0.019, i.e. 1-2 % of a core doing nothing). Here the inotify
file descriptor is registered with the asyncio event loop (``loop.add_reader``): the
kernel wakes the loop when something changes, no thread polls, an idle watch costs no
CPU, and the first event of a read is reported at once.

What is watched, mirroring what :func:`meshext.sources.manifest_scan.scan_manifests`
reads:

- every folder below the root that is not hidden (a name starting with ``.``),
  without following symbolic links to folders; folders created or moved in later are
  added, folders removed or moved away are dropped;
- the root's parent folder, for events about the root's own name: the root created
  after the start, removed, or replaced as a whole (a symbolic link renamed over it,
  as ``ln -s new tmp && mv -T tmp root`` does). The watches below the root are then
  set up again for whatever the name now points to;
- inside a watched folder, a change counts when it concerns a manifest name (``.yaml``
  or ``.yml``, not hidden), a folder that is not hidden appearing or going away, or a
  symbolic link of any name created or renamed into place. The last case is how a
  Kubernetes ConfigMap mount is updated: the files are written to a new hidden folder
  and a ``..data`` link is renamed over the old one, so the visible ``*.yaml`` links
  resolve to new content while none of them is touched.

When the kernel's event queue overflows, every watch is set up again and a change is
reported. Failures (no inotify on this system, out of watches, out of descriptors)
raise :class:`OSError`, so the caller can fall back to another watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshext.sources.manifest_scan import YAML_SUFFIXES

# Event bits from <sys/inotify.h>.
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

ENTRY_ADDED = IN_CREATE | IN_MOVED_TO
ENTRY_GONE = IN_DELETE | IN_MOVED_FROM
FOLDER_EVENTS = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | ENTRY_ADDED
    | ENTRY_GONE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
# Errors of inotify_add_watch that mean "this folder is not there (any more)".
FOLDER_MISSING = {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP}
READ_SIZE = 1 << 16


class InotifyUnavailable(OSError):
    """This system offers no inotify (not Linux, or the library is missing)."""


async def follow_changes(root: Path, notify: Callable[[], None]) -> None:
    """Call ``notify`` whenever a manifest below ``root`` may have changed (see the
    module docstring for what counts). Runs until cancelled; raises :class:`OSError`
    when inotify cannot be set up or fails later."""
    loop = asyncio.get_running_loop()
    failure: asyncio.Future[None] = loop.create_future()

    def fail(error: OSError) -> None:
        if not failure.done():
            failure.set_exception(error)

    tree = WatchedTree(root, notify, fail)
    try:
        tree.start()
        loop.add_reader(tree.fileno, tree.read_events)
        try:
            await failure
        finally:
            loop.remove_reader(tree.fileno)
    finally:
        tree.close()


def open_inotify() -> Any:
    """A non-blocking ``inotify_simple.INotify``; :class:`InotifyUnavailable` when this
    system has none, another :class:`OSError` (such as EMFILE) when it cannot be had."""
    try:
        import inotify_simple  # noqa: PLC0415 (only installed on Linux)
    except ImportError as exc:
        raise InotifyUnavailable(errno.ENOSYS, "inotify_simple is not installed") from exc
    try:
        return inotify_simple.INotify(nonblocking=True)
    except AttributeError as exc:  # a C library without inotify_init1
        raise InotifyUnavailable(errno.ENOSYS, "this system has no inotify") from exc


class WatchedTree:
    """The inotify watches for one root; :meth:`read_events` is the loop's callback."""

    def __init__(
        self, root: Path, notify: Callable[[], None], fail: Callable[[OSError], None]
    ) -> None:
        self.root = root
        self._notify = notify
        self._fail = fail
        self._inotify: Any = None
        self._parent_watch: int | None = None
        self._folders: dict[int, Path] = {}

    @property
    def fileno(self) -> int:
        return int(self._inotify.fileno())

    def start(self) -> None:
        """Open inotify and watch the root's parent and every folder below the root."""
        self._inotify = open_inotify()
        self._parent_watch = self._add_watch(self.root.parent, FOLDER_EVENTS)
        self._watch_root()

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def watched_folders(self) -> list[Path]:
        """The folders below the root watched now (the root included)."""
        return sorted(self._folders.values())

    def read_events(self) -> None:
        """Read what the kernel has queued, keep the watches in step with the folders,
        and call ``notify`` once if any event counts."""
        try:
            changed = self._handle(self._read_queued())
        except OSError as error:
            self._notify()  # the caller's next watcher starts late: read once more then
            self._fail(error)
            return
        if changed:
            self._notify()

    def _read_queued(self) -> list[Any]:
        from inotify_simple import parse_events  # noqa: PLC0415 (only installed on Linux)

        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(self.fileno, READ_SIZE)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return list(parse_events(b"".join(chunks)))

    def _handle(self, events: list[Any]) -> bool:
        changed = False
        for wd, mask, _cookie, name in events:
            if mask & IN_Q_OVERFLOW:  # events were lost: start over
                self._watch_root()
                changed = True
                continue
            # One descriptor can be both (a root of "." is its own parent).
            if wd == self._parent_watch:
                changed |= self._handle_parent_event(mask, name)
            if wd in self._folders:
                changed |= self._handle_folder_event(wd, mask, name)
        return changed

    def _handle_parent_event(self, mask: int, name: str) -> bool:
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
            if mask & IN_IGNORED:  # the parent is gone: polling alone sees the root again
                self._parent_watch = None
            return False
        if name != self.root.name:
            return False
        if mask & (ENTRY_ADDED | ENTRY_GONE):  # the root appeared, went or was replaced
            self._watch_root()
        return True

    def _handle_folder_event(self, wd: int, mask: int, name: str) -> bool:
        folder = self._folders[wd]
        if mask & IN_IGNORED:  # the folder was removed, or its watch taken away
            del self._folders[wd]
            return False
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            return folder == self.root
        entry = folder / name
        if mask & IN_ISDIR:
            if name.startswith("."):
                return False
            if mask & ENTRY_GONE:
                self._forget_tree(entry)
            if mask & ENTRY_ADDED:
                self._watch_tree(entry)
            return bool(mask & (ENTRY_ADDED | ENTRY_GONE))
        if name.endswith(YAML_SUFFIXES) and not name.startswith("."):
            return True
        return bool(mask & ENTRY_ADDED) and entry.is_symlink()

    def _watch_root(self) -> None:
        """Watch the folders below the root afresh (after it appeared or changed)."""
        self._forget_tree(None)
        if self.root.is_dir():
            self._watch_tree(self.root)

    def _watch_tree(self, top: Path) -> None:
        for folder, subfolders, _names in os.walk(top, followlinks=False):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            path = Path(folder)
            # The root may be a symbolic link to a folder (it is read through it);
            # folders below it are never followed, like the reader does.
            flags = FOLDER_EVENTS if path == self.root else FOLDER_EVENTS | IN_DONT_FOLLOW
            wd = self._add_watch(path, flags)
            if wd is not None:
                self._folders[wd] = path

    def _forget_tree(self, top: Path | None) -> None:
        """Drop the watches of ``top`` and the folders below it (of all when None)."""
        for wd, folder in list(self._folders.items()):
            if top is None or folder == top or top in folder.parents:
                del self._folders[wd]
                if wd == self._parent_watch:
                    continue
                with contextlib.suppress(OSError):  # already gone with its folder
                    self._inotify.rm_watch(wd)

    def _add_watch(self, folder: Path, flags: int) -> int | None:
        """The watch descriptor, or None when the folder is not (or no longer) there;
        any other error (such as ENOSPC: out of watches) is raised."""
        try:
            return int(self._inotify.add_watch(folder, flags))
        except OSError as error:
            if error.errno in FOLDER_MISSING:
                return None
            raise
