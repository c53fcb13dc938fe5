"""A config source over a folder that reloads it whenever a file below it changes.

File-system events (watchfiles) make reloads immediate; a periodic check of a cheap
fingerprint (names, sizes and modification times of the YAML files) catches what
events miss, such as changes made before the watcher was registered. Changes are
debounced: editors write a file in several steps and a ``git checkout`` touches
many at once, so the folder is read again once it has been quiet for ``debounce``
seconds. Every reload yields the complete state; a consumer never needs history.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path

import watchfiles

from meshext.sources.folder import LoadResult, load_folder
from meshext.sources.generations import GenerationTracker
from meshext.sources.manifest_scan import YAML_SUFFIXES, scan_manifests

Fingerprint = tuple[tuple[str, int, int], ...]


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

    def __init__(self, root: Path, *, debounce: float = 0.1, poll_interval: float = 1.0) -> None:
        self.root = root
        self.debounce = debounce
        self.poll_interval = poll_interval
        self._generations = GenerationTracker()

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r})"

    async def updates(self) -> AsyncGenerator[LoadResult, None]:
        events = asyncio.Event()
        watcher = asyncio.create_task(self._watch(events))
        try:
            last = await asyncio.to_thread(fingerprint, self.root)
            yield self._generations.stamp(await asyncio.to_thread(load_folder, self.root))
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(events.wait(), self.poll_interval)
                current = await self._quiet_fingerprint(events)
                if current != last:
                    last = current
                    yield self._generations.stamp(await asyncio.to_thread(load_folder, self.root))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _quiet_fingerprint(self, events: asyncio.Event) -> Fingerprint:
        """The fingerprint once no event has arrived for ``debounce`` seconds."""
        while events.is_set():
            events.clear()
            await asyncio.sleep(self.debounce)
        return await asyncio.to_thread(fingerprint, self.root)

    async def _watch(self, events: asyncio.Event) -> None:
        """Set ``events`` on every change; if the folder cannot be watched (it does not
        exist yet, or the system is out of watches), polling alone keeps the source live."""
        watch_root = self.root if self.root.is_dir() else self.root.parent
        with contextlib.suppress(OSError):
            async for _ in watchfiles.awatch(watch_root, watch_filter=_yaml_changes, step=10):
                events.set()


def _yaml_changes(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(YAML_SUFFIXES) and "/." not in path
