"""A config source over a folder that reloads it whenever a file below it changes.

File-system events start a reload as soon as they arrive: there is no fixed quiet
period on the way from an edit to the proxies. On Linux they come from inotify,
read by the event loop itself (:mod:`meshext.sources.inotify_watch`): the first event
of a burst wakes the reload, and an idle folder costs no CPU. Where inotify is not
available or fails (another system, out of watches or descriptors), a warning is
logged and watchfiles takes over; it hands the events of one burst over together,
once ``step`` milliseconds pass without a new one. Either way, a periodic check of a
cheap fingerprint (names, sizes and modification times of the YAML files) catches
what events miss, such as changes made before the watcher was registered.

What keeps a write in progress from being read half-way:

- a read counts only if the fingerprint is the same before and after it and no event
  arrived meanwhile; otherwise the folder is read again (the file changed under the
  reader);
- editors and tools that write a temporary file and rename it over the old one
  (atomic replacement) are seen only at the rename: hidden files are not watched;
- a file that does not load and was modified less than ``debounce`` seconds ago may
  be a write that paused half-way: its error is reported only if no further change
  comes within the rest of that time. A file that loads is taken at once.

Every reload yields the complete state; a consumer never needs history.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import watchfiles

from meshext.sources.folder import DecodedFiles, LoadResult, load_folder
from meshext.sources.generations import GenerationTracker
from meshext.sources.inotify_watch import follow_changes
from meshext.sources.manifest_scan import YAML_SUFFIXES, scan_manifests

Fingerprint = tuple[tuple[str, int, int], ...]

_log = logging.getLogger(__name__)


def fingerprint(root: Path) -> Fingerprint:
    """What changes whenever a manifest below ``root`` is added, removed or edited."""
    entries = []
    scan = scan_manifests(root) if root.exists() else None
    for path in scan.files if scan else ():
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    for problem in scan.problems if scan else ():
        entries.append((f"{problem.path}: {problem.message}", -1, -1))
    return tuple(sorted(entries))


class FolderSource:
    """:class:`meshext.sources.base.ConfigSource` over a folder of YAML manifests."""

    def __init__(
        self, root: Path, *, debounce: float = 0.1, poll_interval: float = 1.0, step: int = 10
    ) -> None:
        """``debounce``: how long a file that was just modified and does not load is
        given to be completed; ``step``: milliseconds a read waits for a writer that
        changed the folder under it, and, with watchfiles, without events that end a
        burst."""
        self.root = root
        self.debounce = debounce
        self.poll_interval = poll_interval
        self.step = step
        self._generations = GenerationTracker()
        # Loads run one at a time (each awaited before the next starts).
        self._decoded = DecodedFiles()

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r})"

    async def updates(self) -> AsyncGenerator[LoadResult, None]:
        events = asyncio.Event()
        watcher = asyncio.create_task(self._watch(events))
        try:
            last, result = await self._consistent_load(events)
            yield self._generations.stamp(result)
            while True:
                try:
                    await asyncio.wait_for(events.wait(), self.poll_interval)
                except TimeoutError:  # the periodic check: read only if something changed
                    if await asyncio.to_thread(fingerprint, self.root) == last:
                        continue
                current, result = await self._consistent_load(events)
                if current != last:
                    last = current
                    yield self._generations.stamp(result)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _consistent_load(self, events: asyncio.Event) -> tuple[Fingerprint, LoadResult]:
        """The folder as it is once a read finds it unchanged from start to end, with
        the fingerprint of that state. See the module docstring for the rules."""
        while True:
            events.clear()
            before, result, after = await asyncio.to_thread(_read, self.root, self._decoded)
            if before != after or events.is_set():
                await self._next_event(events, self.step / 1000)  # let the writer go on
                continue
            wait = _time_left_to_complete(result, after, self.debounce)
            if wait and await self._next_event(events, wait):
                continue
            return after, result

    @staticmethod
    async def _next_event(events: asyncio.Event, timeout: float) -> bool:
        """Whether an event arrives within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(events.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _watch(self, events: asyncio.Event) -> None:
        """Set ``events`` on every change: with inotify, else with watchfiles (after one
        warning). If the folder cannot be watched at all, polling alone keeps the
        source live."""
        try:
            await follow_changes(self.root, events.set)
        except OSError as error:
            _log.warning(
                "cannot watch %s with inotify (%s); watching with watchfiles instead, "
                "which wakes every %d ms",
                self.root,
                error,
                self.step,
            )
        events.set()  # whatever changed while the watchers switched is read now
        await self._watch_with_watchfiles(events)

    async def _watch_with_watchfiles(self, events: asyncio.Event) -> None:
        watch_root = self.root if self.root.is_dir() else self.root.parent
        with contextlib.suppress(OSError):
            async for _ in watchfiles.awatch(
                watch_root, watch_filter=_yaml_changes, step=self.step
            ):
                events.set()


def _read(
    root: Path, decoded: DecodedFiles | None = None
) -> tuple[Fingerprint, LoadResult, Fingerprint]:
    """The folder's fingerprint before and after loading it, and what was loaded."""
    before = fingerprint(root)
    result = load_folder(root, decoded=decoded)
    return before, result, fingerprint(root)


def _time_left_to_complete(result: LoadResult, current: Fingerprint, window: float) -> float:
    """How much of ``window`` (seconds) is left for the most recently modified file with
    an error to be completed; 0 when no such file was modified within ``window``."""
    broken = {error.location.path for error in result.errors if error.location is not None}
    if not broken:
        return 0.0
    newest = max((mtime for path, mtime, _ in current if path in broken), default=None)
    if newest is None:
        return 0.0
    age = (time.time_ns() - newest) / 1e9
    return min(window, max(0.0, window - age))


def _yaml_changes(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(YAML_SUFFIXES) and "/." not in path
